"""The row count from which a model's linear layers give each row the same bits.

CPU matrix products pick their kernels by the shape: a one-row product is a
matrix-vector kernel, a few rows another kernel, and with several threads the rows
may be split between them in ways that depend on the count. From some number of
rows on, though, the kernel is the same and each row's result depends on that row
alone, whatever the others and its position. That number is measured here on the
model's own weights (every distinct linear shape, with its bias), at the thread
count in use: :class:`RowPadding` finds the smallest ``P`` among :data:`CANDIDATES`
such that every count from ``P`` to the most rows a pass may run gives the probe rows
the same bits at every position checked. A batched pass of fewer rows is then padded
to ``P`` with dummy rows, and needs no per-layer change at all (the fast path of
:mod:`agoranet.engines.batch`); when no candidate holds (another BLAS, other hardware),
:meth:`RowPadding.rows` says None and the caller computes each row as a product of
its own instead.

The probe is evidence, not proof: it covers every row count a pass can run, three
positions per count and every row of each product, on random inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["CANDIDATES", "RowPadding", "holds_from", "invariant_from"]

CANDIDATES = (1, 2, 4, 8, 12, 16)

Linear = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _layers(model: Any) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """One (weight, bias) per distinct linear shape of ``model``."""
    seen: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor | None]] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            weight, bias = module.weight, module.bias
            key = (tuple(weight.shape), weight.dtype, weight.device, bias is not None)
            seen.setdefault(key, (weight, bias))
    return list(seen.values())


def holds_from(weight: torch.Tensor, bias: torch.Tensor | None, max_rows: int,
               generator: torch.Generator, linear: Linear = F.linear) -> int | None:
    """The smallest candidate ``P`` from which ``F.linear`` on this layer gives each row
    the same bits for every row count up to ``max_rows`` (None: none does)."""
    inputs = torch.randn((max_rows, weight.shape[1]), generator=generator).to(weight)
    probe = torch.randn((weight.shape[1],), generator=generator).to(weight)
    expected: dict[int, torch.Tensor] = {}  # each input row's result, first seen
    expected_probe: torch.Tensor | None = None
    lowest = max_rows + 1  # the counts from here to max_rows all hold
    for count in range(max_rows, 0, -1):  # downwards: the holding counts are a range
        places = sorted({0, count // 2, count - 1})
        rows = inputs[:count].clone()
        rows[places] = probe
        out = linear(rows, weight, bias)
        if expected_probe is None:
            expected_probe = out[places[0]].clone()
        same = all(torch.equal(out[i], expected_probe) for i in places)
        for i in range(count):
            if same and i not in places:
                seen = expected.setdefault(i, out[i].clone())
                same = torch.equal(out[i], seen)
        if not same:
            break
        lowest = count
    return next((p for p in CANDIDATES if p >= lowest), None)


def invariant_from(model: Any, max_rows: int) -> int | None:
    """The smallest candidate row count from which every linear layer of ``model`` gives
    each row the same bits, for passes of up to ``max_rows`` rows (None: none does)."""
    max_rows = max(max_rows, max(CANDIDATES))
    generator = torch.Generator().manual_seed(0)
    needed = 1
    with torch.inference_mode():
        for weight, bias in _layers(model):
            found = holds_from(weight, bias, max_rows, generator)
            if found is None:
                return None
            needed = max(needed, found)
    return needed


class RowPadding:
    """The padded row count of a model's batched passes, measured once per thread count."""

    def __init__(self, model: Any, max_rows: int) -> None:
        self._model = model
        self._max_rows = max_rows
        self._found: dict[int, int | None] = {}

    def rows(self, count: int) -> int | None:
        """The rows a pass of ``count`` rows runs (padded up to the measured ``P``), or
        None where padding cannot make the rows' bits independent of the batch."""
        threads = torch.get_num_threads()
        if threads not in self._found or count > self._max_rows:
            self._max_rows = max(self._max_rows, count)
            self._found[threads] = invariant_from(self._model, self._max_rows)
        least = self._found[threads]
        return None if least is None else max(count, least)
