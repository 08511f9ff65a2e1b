"""Dishonest serving, for tests of the auditor only: weights quietly degraded in memory.

A cheating node still publishes the honest weights' sha256 (hashed from the
files) while it serves rounded weights: exactly the fraud audits must catch.
Never used unless a node is started with the hidden ``--cheat`` option.
"""

from __future__ import annotations

from typing import Any

import torch

from agoranet.errors import ConfigError

__all__ = ["CHEATS", "degrade"]

CHEATS = ("int8", "int4")


def _round_per_channel(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel quantisation and back (what a cheap quantised copy does)."""
    levels = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / levels
    rounded: torch.Tensor = (weight / scale).round().clamp(-levels, levels) * scale
    return rounded


def degrade(model: Any, mode: str) -> None:
    """Replace every linear layer's weights in place by their ``mode`` rounding."""
    bits = {"int8": 8, "int4": 4}.get(mode)
    if bits is None:
        raise ConfigError(f"unknown cheat {mode!r}; known: {', '.join(CHEATS)}")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(_round_per_channel(module.weight.float(), bits))
