"""Padded batched passes (issue #17): the probe of the row count from which a linear
layer's rows do not depend on the batch, its fallback, and the worker's threads."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from typing import Any

import pytest
import torch

from agoranet.engines import rowpad
from agoranet.engines.base import GenerationRequest, collect
from agoranet.engines.batch import BatchRunner, use_threads
from agoranet.engines.hf import TransformersEngine
from agoranet.engines.kvcache import SequenceCache
from agoranet.engines.ragged import InvariantLinear, invariant_linear
from agoranet.engines.rowpad import RowPadding, holds_from, invariant_from
from agoranet.verify.node_audit import challenges


async def answer(engine: TransformersEngine, request: GenerationRequest) -> tuple[Any, ...]:
    text, tokens, finish = await collect(engine.stream(await engine.prepare(request)))
    return text, tuple((t.token_id, t.logprob) for t in tokens), finish.completion_tokens


def _layer() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn((24, 16), generator=generator), torch.randn(24, generator=generator)


def _counted(below: int) -> rowpad.Linear:
    """A BLAS whose rows change in the last bits when a product has fewer than ``below``
    rows (as CPU kernels do for small counts); else each row is a product of its own."""
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
               ) -> torch.Tensor:
        out = invariant_linear(x, weight, bias)
        return out * (1 + 2**-20) if x.shape[0] < below else out
    return linear


def test_the_probe_finds_the_smallest_count_that_holds() -> None:
    weight, bias = _layer()
    probe = torch.Generator()
    assert holds_from(weight, bias, 20, probe.manual_seed(0), _counted(1)) == 1
    assert holds_from(weight, bias, 20, probe.manual_seed(0), _counted(6)) == 8
    assert holds_from(weight, bias, 20, probe.manual_seed(0), _counted(4)) == 4
    assert holds_from(weight, bias, 20, probe.manual_seed(0), _counted(13)) == 16
    # beyond every candidate: nothing holds
    assert holds_from(weight, bias, 40, probe.manual_seed(0), _counted(17)) is None


def test_the_probe_sees_a_row_that_depends_on_its_position() -> None:
    def by_position(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                    ) -> torch.Tensor:
        out = invariant_linear(x, weight, bias)
        out[-1] = out[-1] * (1 + 2**-20)  # the last row takes another path
        return out

    weight, bias = _layer()
    assert holds_from(weight, bias, 20, torch.Generator().manual_seed(0), by_position) is None


def test_the_tiny_model_pads_to_a_count_that_really_holds(tiny_loaded: Any) -> None:
    least = invariant_from(tiny_loaded.model, 16)
    assert least is not None  # this machine's BLAS: some count holds
    padding = RowPadding(tiny_loaded.model, 16)
    assert padding.rows(1) == least and padding.rows(16) == 16
    layer = tiny_loaded.model.lm_head
    rows = torch.randn((16, layer.in_features), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        full = layer(rows)
        for count in range(least, 17):
            assert torch.equal(layer(rows[:count]), full[:count]), count


async def test_without_a_count_that_holds_rows_are_their_own_products(
        tiny_loaded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no padded count holds (another BLAS), the batch falls back to one product
    per row, and answers are still the same alone and together."""
    monkeypatch.setattr("agoranet.engines.rowpad.invariant_from", lambda model, rows: None)
    runner = BatchRunner(tiny_loaded, threads=None)
    rows, mode = runner._mode(5)
    assert rows == 5 and isinstance(mode, InvariantLinear)
    padded = BatchRunner(tiny_loaded, threads=None)
    padded._padding = RowPadding(tiny_loaded.model, 32)
    padded._padding._found[torch.get_num_threads()] = 4
    rows, mode = padded._mode(3)
    assert rows == 4 and isinstance(mode, contextlib.nullcontext)
    engine = TransformersEngine(loaded=tiny_loaded, max_active=16, max_queue=64)
    try:
        requests = challenges(16, "tiny", 12, random.Random(5))
        alone = [await answer(engine, r) for r in requests]
        together = await asyncio.gather(*(answer(engine, r) for r in requests))
        assert engine.stats()["max_batch"] >= 8
    finally:
        await engine.aclose()
    assert together == alone


def test_use_threads_sets_only_the_calling_thread() -> None:
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    seen: dict[str, int] = {}

    def worker() -> None:
        use_threads(target)
        seen["worker"] = torch.get_num_threads()

    def later() -> None:
        seen["later"] = torch.get_num_threads()

    for run in (worker, later):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    assert seen == {"worker": target, "later": before}
    assert torch.get_num_threads() == before


def test_one_position_at_a_time_fills_the_same_cache() -> None:
    generator = torch.Generator().manual_seed(2)
    keys = torch.randn((1, 2, 5, 4), generator=generator)
    values = torch.randn((1, 2, 5, 4), generator=generator)
    whole, stepwise = SequenceCache(initial=2), SequenceCache(initial=2)
    all_keys, all_values = whole.append(0, keys, values)
    stepwise.append(0, keys[:, :, :2], values[:, :, :2])
    for position in range(2, 5):
        pair = torch.stack((keys[:, :, position:position + 1], values[:, :, position:position + 1]))
        got_keys, got_values = stepwise.append_one(0, pair)
    assert torch.equal(got_keys, all_keys) and torch.equal(got_values, all_values)
    assert stepwise.length(0) == 5 and stepwise.length(1) == 0
    assert stepwise.nbytes == whole.nbytes == 2 * 2 * 8 * 4 * 4  # capacity 2 -> 4 -> 8
