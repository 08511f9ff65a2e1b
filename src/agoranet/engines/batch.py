"""Continuous batching for the ``transformers`` engine.

At every step, one forward pass runs every active sequence (a ragged batch, see
:mod:`agoranet.engines.ragged`): a decoding sequence feeds its last token, a new
one the next chunk of its prompt. New requests join at any step boundary;
finished and cancelled ones leave at the next. Sampling, grammars, stop strings,
logprobs and commitments stay per sequence (each is a
:class:`~agoranet.engines.hf_job.DecodeJob`, given its row of the logits).

Prompts are fed in chunks of ``chunk`` tokens cut at fixed offsets from the start
of each prompt, each chunk in a forward pass of its own (so its numbers depend on
nothing else), at most ``prefill_budget`` prompt tokens per step (always at least
one chunk): a long prompt never stalls the running batch for long. The decoding
sequences share one pass; with ``invariant`` (the default on CPU) every row of it is
computed with the bits it would have alone (the pass padded to a measured row count,
see :mod:`agoranet.engines.rowpad`), so greedy answers and seeded samples do not depend
on the batch they ran in. On CPU the worker runs its passes on ``threads`` intra-op
threads (default 1: the batch is the parallelism, and the server keeps a core). Requests for different LoRA adapters run in one
step: one decoding pass runs each row with its own adapter (peft's mixed batches).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from agoranet.engines.base import StreamEvent
from agoranet.engines.kvcache import SequenceCache
from agoranet.engines.lean_pass import lean_pass
from agoranet.engines.ragged import (
    InvariantLinear,
    RaggedBatch,
    Segment,
    enable_ragged,
    ragged_unsupported,
    rows_match_alone,
)
from agoranet.engines.rowpad import RowPadding
from agoranet.engines.scheduler import StepScheduler, _Handle

if TYPE_CHECKING:
    from agoranet.engines.adapters import AdapterPool
    from agoranet.engines.hf_job import DecodeJob
    from agoranet.engines.hf_loading import LoadedModel

__all__ = ["BatchRunner", "BatchScheduler", "engine_scheduler", "use_threads"]

logger = logging.getLogger(__name__)

Outcome = list[StreamEvent] | Exception


@dataclass(eq=False)
class _Slot:
    cache: SequenceCache = field(default_factory=SequenceCache)
    fed: int = 0  # prompt tokens fed so far


@dataclass(frozen=True, slots=True)
class _Entry:
    job: DecodeJob
    slot: _Slot
    ids: list[int]
    prefill: bool  # a chunk of the prompt (else the last sampled token)

    @property
    def completes(self) -> bool:
        """Whether this step's last row gives the logits of its next token (before the
        step is counted in ``slot.fed``)."""
        return not self.prefill or self.slot.fed + len(self.ids) >= len(self.job.prompt_ids)


class BatchRunner:
    """Runs one step of many sequences at once on one model (worker thread only)."""

    def __init__(self, loaded: LoadedModel, *, chunk: int = 256, prefill_budget: int = 512,
                 invariant: bool | None = None, adapters: AdapterPool | None = None,
                 max_rows: int = 32, threads: int | None = 1) -> None:
        self.loaded = loaded
        # Intra-op threads of its passes on CPU (None: torch's setting): the batch is the
        # parallelism, and a core stays free for the server (see use_threads).
        self.threads = threads if loaded.device.type == "cpu" else None
        self.chunk = max(1, chunk)
        self.prefill_budget = max(1, prefill_budget)
        self.invariant = loaded.device.type == "cpu" if invariant is None else invariant
        self._adapters = adapters
        enable_ragged(loaded.model)
        # Invariant passes of fewer rows than the measured count are padded to it (see
        # engines.rowpad); where no count makes rows independent, InvariantLinear.
        self._padding = RowPadding(loaded.model, max_rows) if self.invariant else None
        self._lone_is_invariant: bool | None = None  # for InvariantLinear, measured once
        self._slots: dict[DecodeJob, _Slot] = {}
        # A ready 4D mask: transformers takes it as is and builds none per pass (the ragged
        # attention ignores it: each sequence attends over exactly its own past)
        self._no_mask = torch.zeros((1, 1, 1, 1), dtype=loaded.model.dtype, device=loaded.device)
        self._lean = lean_pass(loaded.model)  # None: the model's full forward

    def release(self, job: DecodeJob) -> None:
        """Forget ``job`` and free its cache."""
        self._slots.pop(job, None)

    def cached_bytes(self) -> int:
        """Bytes the sequences' caches hold (safe to call from any thread)."""
        return sum(slot.cache.nbytes for slot in list(self._slots.values()))

    def step(self, jobs: list[DecodeJob]) -> dict[DecodeJob, Outcome]:
        """One step of ``jobs``: a pass per prompt chunk due, then one pass of all the
        decoding ones; each job's events, or the exception that ended it."""
        groups: dict[str | None, list[_Entry]] = {}
        chunks: list[_Entry] = []
        for entry in self._plan(jobs):
            if entry.prefill:
                chunks.append(entry)
            else:
                groups.setdefault(entry.job.adapter, []).append(entry)
        results: dict[DecodeJob, Outcome] = {}
        pool = self._adapters
        for entry in chunks:  # a pass of its own: its bits depend on the chunk alone
            if pool is not None:
                pool.activate(entry.job.adapter)
            results.update(self._forward([entry], invariant=False))
        adapters = [name for name in groups if name is not None]
        if pool is None or not adapters:  # the base model alone
            if pool is not None and groups:
                pool.activate(None)
            for entries in groups.values():
                results.update(self._forward(entries, invariant=self.invariant))
            return results
        # Rows with adapters: one pass runs each row with its own (as many adapters as
        # the pool holds at once; beyond that, more such passes).
        for start in range(0, len(adapters), pool.capacity):
            entries = groups.get(None, []) if start == 0 else []
            entries = entries + [entry for name in adapters[start:start + pool.capacity]
                                 for entry in groups[name]]
            results.update(self._forward(entries, invariant=self.invariant, pool=pool))
        return results

    def _plan(self, jobs: list[DecodeJob]) -> Iterator[_Entry]:
        budget = self.prefill_budget
        prefilled = False
        for job in jobs:
            slot = self._slots.get(job)
            if slot is None:
                slot = self._slots[job] = _Slot()
            prompt = job.prompt_ids
            if slot.fed < len(prompt):
                end = min(len(prompt), (slot.fed // self.chunk + 1) * self.chunk)
                if prefilled and end - slot.fed > budget:
                    continue  # its chunk waits for the next step
                budget -= end - slot.fed
                prefilled = True
                yield _Entry(job, slot, prompt[slot.fed:end], True)
            elif job.last_token is not None:
                yield _Entry(job, slot, [job.last_token], False)

    def _mode(self, rows: int) -> tuple[int, contextlib.AbstractContextManager[Any]]:
        """The rows an invariant pass of ``rows`` rows runs (padding included), and the
        mode it runs under."""
        padded = self._padding.rows(rows) if self._padding is not None else None
        if padded is not None:
            return padded, contextlib.nullcontext()
        if rows == 1:  # outside InvariantLinear one row runs plain F.linear: same bits?
            if self._lone_is_invariant is None:
                self._lone_is_invariant = rows_match_alone(self.loaded.model)
            if self._lone_is_invariant:
                return rows, contextlib.nullcontext()
        return rows, InvariantLinear()

    def _forward(self, entries: list[_Entry], *, invariant: bool,
                 pool: AdapterPool | None = None) -> dict[DecodeJob, Outcome]:
        """One pass of ``entries`` (``pool``: each row with its own adapter)."""
        device = self.loaded.device
        ids: list[int] = []
        positions: list[int] = []
        segments: list[Segment] = []
        for entry in entries:
            start = entry.slot.cache.length()
            segments.append(Segment(entry.slot.cache, len(ids), len(entry.ids)))
            ids.extend(entry.ids)
            positions.extend(range(start, start + len(entry.ids)))
        hidden = any(entry.job.wants_hidden for entry in entries)
        real = len(ids)
        rows, mode = self._mode(real) if invariant else (real, contextlib.nullcontext())
        ids.extend([0] * (rows - real))  # padding rows: attention leaves them out
        positions.extend([0] * (rows - real))
        adapters: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if pool is not None:  # loads adapters if need be: outside inference mode
            idents = [entry.job.adapter for entry in entries for _ in entry.ids]
            adapters = pool.rows(idents + [None] * (rows - real))
        batch = RaggedBatch(tuple(segments), decoding=real == len(segments))
        with adapters, torch.inference_mode(), mode:
            inputs = torch.tensor((ids, positions), dtype=torch.long, device=device)
            if self._lean is not None:  # the same modules, less per-call setup
                logits, normed = self._lean(inputs[0].view(-1, 1), inputs[1].view(-1, 1),
                                            ragged_batch=batch)
                last = normed[:, -1] if hidden else None
            else:
                output = self.loaded.model(
                    input_ids=inputs[0].view(-1, 1), position_ids=inputs[1].view(-1, 1),
                    attention_mask=self._no_mask, use_cache=False, output_hidden_states=hidden,
                    ragged_batch=batch)
                logits = output.logits
                last = output.hidden_states[-1][:, -1] if hidden else None
        logits = logits[:, -1]
        states = last
        results: dict[DecodeJob, Outcome] = {}
        for entry, segment in zip(entries, segments, strict=True):
            span = slice(segment.start, segment.start + segment.length)
            try:
                completes = entry.completes
                if states is not None:
                    entry.job.commit_hidden(states[span])
                if entry.prefill:
                    entry.slot.fed += len(entry.ids)
                # a chunk before the prompt's last one has no token to sample yet
                results[entry.job] = entry.job.consume(logits[span.stop - 1]) if completes else []
            except Exception as exc:  # surfaced to the request that owns the sequence
                results[entry.job] = exc
        return results


class BatchScheduler(StepScheduler):
    """A :class:`StepScheduler` whose round is one batched step of every active job."""

    def __init__(self, runner: BatchRunner, *, max_active: int, max_queue: int,
                 name: str = "engine") -> None:
        self._runner = runner
        super().__init__(max_active=max_active, max_queue=max_queue, name=name)
        self.counters["max_batch"] = 0  # the most sequences one step has run

    def stats(self) -> dict[str, int]:
        stats = super().stats()
        stats["batch_cache_bytes"] = self._runner.cached_bytes()
        return stats

    def _run(self) -> None:
        if self._runner.threads is not None:
            use_threads(self._runner.threads)
        super()._run()

    def _round(self, handles: list[_Handle]) -> None:
        live: list[_Handle] = []
        for handle in handles:
            if handle.cancelled:
                self._runner.release(handle.job)  # type: ignore[arg-type]
                self._finish(handle, "cancelled")
            else:
                live.append(handle)
        if not live:
            return
        jobs: list[DecodeJob] = [handle.job for handle in live]  # type: ignore[misc]
        self.counters["max_batch"] = max(self.counters["max_batch"], len(jobs))
        try:
            results = self._runner.step(jobs)
        except Exception as exc:  # the whole pass failed: every sequence in it
            for handle in live:
                self._runner.release(handle.job)  # type: ignore[arg-type]
                self._finish(handle, "failed")
                handle.emit(exc)
            return
        self.counters["steps"] += 1
        for handle in live:
            outcome = results.get(handle.job)  # type: ignore[call-overload]
            if outcome is None:
                continue  # waiting for its prompt chunk
            if isinstance(outcome, Exception):
                self._runner.release(handle.job)  # type: ignore[arg-type]
                self._finish(handle, "failed")
                handle.emit(outcome)
                continue
            self._deliver(handle, outcome,
                          functools.partial(self._runner.release, handle.job))  # type: ignore[arg-type]


def use_threads(count: int) -> None:
    """Run this thread's torch operations on ``count`` intra-op threads, leaving torch's
    setting for other threads as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    if before != count:  # it also set the default of threads started later: put that back
        restore = threading.Thread(target=torch.set_num_threads, args=(before,))
        restore.start()
        restore.join()


def engine_scheduler(loaded: LoadedModel, *, batching: bool, max_active: int, max_queue: int,
                     name: str, invariant: bool | None = None, prefill_chunk: int = 256,
                     adapters: AdapterPool | None = None, threads: int | None = 1
                     ) -> StepScheduler:
    """The scheduler a ``transformers`` engine runs on: batched when asked and the model
    allows it, else one sequence per step in turn."""
    if batching:
        why = ragged_unsupported(loaded.model)
        if why is None:
            runner = BatchRunner(loaded, chunk=prefill_chunk, invariant=invariant,
                                 max_rows=max_active, adapters=adapters, threads=threads)
            return BatchScheduler(runner, max_active=max_active, max_queue=max_queue,
                                  name=name)
        logger.warning("%s: not batching, one sequence per step (%s)", name, why)
    return StepScheduler(max_active=max_active, max_queue=max_queue, name=name)
