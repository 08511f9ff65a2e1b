"""What TOPLOC-style commitments cost on the tiny model, measured in one run.

The same answers (half greedy, half seeded, ``--tokens`` each, past end of
sequence) are generated without and with commitments, alternately, and each
committed answer is verified against a second copy of the weights. Printed:
the proof size per 32 decode tokens (and for the prefill), generation ms per
token without and with commitments (the median of their per-answer ratio is the
node's whole overhead: hidden states kept and proofs built), the proof building
alone per token, and verification per answer token, each as a ratio to
generation per token. One answer pair warms up first and is not counted; the
two generations of a pair alternate which goes first; figures are medians.
Then the calibration behind the default thresholds: for honest nodes in float32
and bfloat16 and for int8/int4-rounded weights, the share of answers failing
and the chunk statistics against a float32 reference.

Usage: python bench/commitments.py [--model models/tiny] [--answers 16] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.proofs.commitments import (
    CHUNK,
    DEFAULT_THRESHOLDS,
    TOP_K,
    Commitments,
    prove_chunk,
)
from agoranet.testing.cheats import engine_with_cheat
from agoranet.tinymodel.grammar import dialogues
from agoranet.verify.commitment_audit import verify_commitments


@dataclasses.dataclass
class Tally:
    """Per answer: ms per token without and with commitments, and verification."""

    plain_ms: list[float] = dataclasses.field(default_factory=list)
    committed_ms: list[float] = dataclasses.field(default_factory=list)
    verify_ms: list[float] = dataclasses.field(default_factory=list)
    prefill_bytes: int = 0
    decode_bytes: int = 0
    decode_tokens: int = 0
    failed: int = 0


async def timed(engine: TransformersEngine, request: GenerationRequest
                ) -> tuple[float, list[Any], Any]:
    """(ms per output token, tokens, finish) of one generation."""
    started = time.perf_counter()
    _, found, finish = await collect(engine.stream(await engine.prepare(request)))
    return (time.perf_counter() - started) * 1000 / finish.completion_tokens, found, finish


async def run(model: str, answers: int, tokens: int) -> Tally:
    engine = TransformersEngine(loaded=load_model(model))
    reference = load_model(model)
    name = engine.models()[0].name
    tally = Tally()
    try:
        for i, dialogue in enumerate(dialogues(answers + 1, seed=3)):
            sampled = i % 2 == 1
            plain = GenerationRequest(
                model=name, messages=(Message("user", dialogue[-2]["content"]),),
                max_tokens=tokens, temperature=1.0 if sampled else 0.0,
                seed=i if sampled else None, logprobs=True, ignore_eos=True)
            proved = dataclasses.replace(plain, commitments=True)
            # Alternate which goes first, so neither always runs on warmer caches.
            order = (plain, proved) if i % 2 == 0 else (proved, plain)
            results = {id(r): await timed(engine, r) for r in order}
            plain_ms = results[id(plain)][0]
            committed_ms, found, finish = results[id(proved)]
            assert finish.commitments is not None
            proofs: Commitments = finish.commitments
            started = time.perf_counter()
            result = verify_commitments(reference, proved, [t.token_id or 0 for t in found],
                                        proofs)
            verify_ms = (time.perf_counter() - started) * 1000 / finish.completion_tokens
            if i == 0:
                continue  # the warm-up answer: allocations, caches, the proof tables
            tally.plain_ms.append(plain_ms)
            tally.committed_ms.append(committed_ms)
            tally.verify_ms.append(verify_ms)
            tally.prefill_bytes += len(proofs.proofs[0])
            tally.decode_bytes += sum(len(p) for p in proofs.proofs[1:])
            tally.decode_tokens += finish.completion_tokens - 1
            tally.failed += not result.passed
    finally:
        await engine.aclose()
    return tally


async def calibrate(model: str, reference: object, cheat: str | None, dtype: str,
                    answers: int) -> tuple[int, list[tuple[int, float, float]]]:
    """(answers failing, per chunk: mismatches, mantissa mean, median) for one kind of node."""
    engine = engine_with_cheat(cheat, loaded=load_model(model, dtype=dtype))
    failed, stats = 0, []
    try:
        for i, dialogue in enumerate(dialogues(answers, seed=11)):
            request = GenerationRequest(
                model=engine.models()[0].name,
                messages=(Message("user", dialogue[-2]["content"]),), max_tokens=96,
                temperature=1.0 if i % 2 else 0.0, seed=i, logprobs=True, commitments=True)
            _, found, finish = await collect(engine.stream(await engine.prepare(request)))
            assert finish.commitments is not None
            result = verify_commitments(reference, request, [t.token_id or 0 for t in found],
                                        finish.commitments)
            failed += not result.passed
            stats += [(c.exponent_mismatches, c.mantissa_mean, c.mantissa_median)
                      for c in result.checks]
    finally:
        await engine.aclose()
    return failed, stats


def proof_seconds(hidden_size: int, repeats: int = 50) -> float:
    """Seconds to prove one chunk of ``CHUNK`` rows (top-k, interpolation, packing)."""
    rows = torch.randn(CHUNK, hidden_size, generator=torch.Generator().manual_seed(0))
    prove_chunk(rows)  # warm-up: the inverse table is built once per process
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        prove_chunk(rows)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--answers", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 100))
    with console.status("generating and verifying"):
        t = asyncio.run(run(args.model, args.answers, args.tokens))
        hidden = int(load_model(args.model).model.config.hidden_size)
        prove_ms = proof_seconds(hidden) * 1000
    plain_ms = statistics.median(t.plain_ms)
    committed_ms = statistics.median(t.committed_ms)
    verify_ms = statistics.median(t.verify_ms)
    overhead = statistics.median(c / p for c, p in zip(t.committed_ms, t.plain_ms, strict=True))
    table = Table(title=f"commitments on {args.model}: {args.answers} answers x "
                  f"{args.tokens} tokens after one warm-up, medians, k={TOP_K}, chunk={CHUNK}, "
                  f"torch threads {torch.get_num_threads()}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("ratio to generation per token", justify="right")
    table.add_row("proof bytes per 32 decode tokens",
                  f"{t.decode_bytes * CHUNK / t.decode_tokens:.0f}", "")
    table.add_row("prefill proof bytes", f"{t.prefill_bytes / args.answers:.0f}", "")
    table.add_row("generation ms/token, no commitments", f"{plain_ms:.3f}", "1")
    table.add_row("generation ms/token, with commitments", f"{committed_ms:.3f}",
                  f"{overhead:.3f} (median of pairs)")
    table.add_row("proof building alone, ms/token", f"{prove_ms / CHUNK:.4f}",
                  f"{prove_ms / CHUNK / plain_ms:.4f}")
    table.add_row("verification ms per answer token", f"{verify_ms:.3f}",
                  f"{verify_ms / plain_ms:.3f}")
    console.print(table)
    console.print(f"honest answers failing verification: {t.failed} of {args.answers}")

    reference = load_model(args.model)
    table = Table(title="calibration: nodes against a float32 reference (default thresholds: "
                  f"mismatches <= {DEFAULT_THRESHOLDS.max_exponent_mismatch_share:.0%} of k, "
                  f"mean <= {DEFAULT_THRESHOLDS.max_mantissa_mean}, "
                  f"median <= {DEFAULT_THRESHOLDS.max_mantissa_median})")
    for column in ("node", "answers failing", "chunks", "sign/exp mismatches (min-max)",
                   "mantissa mean (min-max)", "median (min-max)"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for cheat, dtype in ((None, "float32"), (None, "bfloat16"), ("int8", "float32"),
                         ("int4", "float32"), ("int4", "bfloat16")):
        with console.status(f"{cheat or 'honest'} {dtype}"):
            failed, stats = asyncio.run(calibrate(args.model, reference, cheat, dtype,
                                                  args.answers))
        e, m, md = (sorted(s[j] for s in stats) for j in range(3))
        table.add_row(f"{cheat or 'honest'} {dtype}", f"{failed}/{args.answers}",
                      str(len(stats)), f"{e[0]}-{e[-1]}", f"{m[0]:.2f}-{m[-1]:.2f}",
                      f"{md[0]:.0f}-{md[-1]:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
