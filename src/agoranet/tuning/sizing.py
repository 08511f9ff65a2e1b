"""How much training a job is, counted before it runs: tokens, epochs, optimiser steps.

The count mirrors :func:`agoranet.tuning.lora.train_adapter` exactly: the same
seeded train / held-out split, the same tokenisation (loss on assistant tokens
only, with the model's own tokenizer and context), the same default epochs and
batches. A node prices a fine-tuning job from it before any training (the
job's worst case is ``tokens`` at the offer's training price), and charges a
job that ends early pro rata by the steps it trained. No torch here: counting
needs only the tokenizer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agoranet.errors import ModelLoadError
from agoranet.tuning.config import TuneConfig, default_epochs
from agoranet.tuning.data import Example, split, tokenize

__all__ = ["Sizer", "TrainingSize", "local_sizer", "training_size"]


@dataclass(frozen=True)
class TrainingSize:
    """A job's training: ``tokens`` trained over all ``epochs``, in ``steps`` batches."""

    tokens: int
    epochs: int
    steps: int

    def tokens_after(self, step: int) -> int:
        """Tokens trained after ``step`` of ``steps`` steps, pro rata, rounded down."""
        if self.steps <= 0:
            return 0
        return self.tokens * min(max(step, 0), self.steps) // self.steps


# (examples, config) -> the training they make
Sizer = Callable[[list[Example], TuneConfig], TrainingSize]


def training_size(tokenizer: Any, context_length: int, examples: list[Example],
                  config: TuneConfig) -> TrainingSize:
    """The training :func:`~agoranet.tuning.lora.train_adapter` will do on ``examples``.

    Raises :class:`~agoranet.errors.TuningDataError` for an example over the context.
    """
    train, _ = split(examples, config.held_out, config.seed)
    per_epoch = sum(tokenize(tokenizer, e, context_length).trained_tokens for e in train)
    epochs = config.epochs or default_epochs(len(train))
    steps = math.ceil(len(train) / config.batch_size) * epochs
    return TrainingSize(per_epoch * epochs, epochs, steps)


def local_sizer(base_dir: Path, context_length: int) -> Sizer:
    """A sizer with its own copy of the tokenizer in ``base_dir`` (loaded on first use, so
    counting never shares a tokenizer with the engine's threads)."""
    lock = threading.Lock()
    loaded: list[Any] = []

    def size(examples: list[Example], config: TuneConfig) -> TrainingSize:
        with lock:
            if not loaded:
                from transformers import AutoTokenizer

                try:
                    loaded.append(AutoTokenizer.from_pretrained(str(base_dir)))
                except (OSError, ValueError) as exc:
                    raise ModelLoadError(f"cannot load the tokenizer in {base_dir}: {exc}"
                                         ) from exc
            return training_size(loaded[0], context_length, examples, config)

    return size
