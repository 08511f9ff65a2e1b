"""Training knobs for LoRA fine-tuning, and how their defaults are chosen (no torch here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["TuneConfig", "default_epochs", "default_learning_rate"]


def default_learning_rate(parameters: int) -> float:
    if parameters < 100_000_000:
        return 5e-3
    return 1e-3 if parameters < 1_000_000_000 else 2e-4


def default_epochs(examples: int) -> int:
    return max(3, min(12, math.ceil(600 / max(examples, 1))))


@dataclass(frozen=True)
class TuneConfig:
    """Training knobs. ``None`` picks a default from the model and data size:
    the learning rate falls with the model's size (5e-3 under 100M parameters,
    1e-3 under 1B, 2e-4 above), and small data sets get more epochs (3 to 12).
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    learning_rate: float | None = None
    epochs: int | None = None
    batch_size: int = 8
    held_out: float = 0.1
    seed: int = 0
    target_modules: Sequence[str] | str = "all-linear"
    weight_decay: float = 0.0
