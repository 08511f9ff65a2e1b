"""Numerical drift of continuous batching on the tiny model, in one run.

For the unbatched engine (``batching=False``), the batched engine with batch-invariant
rows (the default on CPU) and the batched engine with plain matrix products
(``batch_invariant=False``), at 1, 4 and 16 concurrent streams, on the same greedy and
seeded audit challenges: the reported log-probabilities' drift from the reference
(one forward pass over prompt + answer, what an audit replays; mean and max of each
answer's mean absolute error, against the audit's tolerance of 0.05), answers
flagged by the audit, and answers whose tokens differ from the same request run
alone on that engine.

Usage: python bench/batching.py [--model models/tiny] [--answers 96] [--tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.verify.audit import audit_answer
from agoranet.verify.calibration import generate_answers
from agoranet.verify.node_audit import challenges

ENGINES: dict[str, dict[str, Any]] = {
    "unbatched (one sequence per step)": {"batching": False},
    "batched, invariant rows (default)": {"batch_invariant": True},
    "batched, plain matmuls": {"batch_invariant": False},
}


async def rows(model: str, answers: int, tokens: int) -> list[tuple[str, int, list[float], int, int]]:
    reference = load_model(model)
    served = load_model(model)
    requests = challenges(answers, "tiny", tokens, random.Random(17))
    out: list[tuple[str, int, list[float], int, int]] = []
    for label, options in ENGINES.items():
        engine = TransformersEngine(loaded=served, max_active=16, max_queue=256, **options)
        try:
            alone = await generate_answers(engine, requests, concurrency=1)
            for concurrency in (1, 4, 16):
                got = alone if concurrency == 1 else await generate_answers(
                    engine, requests, concurrency=concurrency)
                results = [audit_answer(reference, r, a.token_ids, a.logprobs)
                           for r, a in zip(requests, got, strict=True)]
                differ = sum(a.token_ids != b.token_ids for a, b in zip(alone, got, strict=True))
                out.append((label, concurrency, [r.mean_logprob_error for r in results],
                            sum(r.flagged for r in results), differ))
        finally:
            await engine.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--answers", type=int, default=96)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").exists():
        raise SystemExit(f"no model at {args.model}: run `agoranet model tiny {args.model}`")
    console = Console(width=max(Console().width, 120))
    with console.status("generating and auditing"):
        measured = asyncio.run(rows(args.model, args.answers, args.tokens))
    table = Table(title=f"{args.answers} audit challenges (half greedy, half seeded), "
                        f"{args.tokens} tokens, against the reference forward pass")
    for column in ("engine", "streams", "mean drift", "max drift", "flagged",
                   "answers unlike alone"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for label, concurrency, drift, flagged, differ in measured:
        table.add_row(label, str(concurrency), f"{statistics.fmean(drift):.2e}",
                      f"{max(drift):.2e}", f"{flagged}/{len(drift)}", str(differ))
    console.print(table)
    console.print("drift: an answer's mean |reported logprob - reference logprob|; the audit "
                  "flags an answer over 0.05.")


if __name__ == "__main__":
    main()
