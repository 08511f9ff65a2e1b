"""Audit cost and detection on the tiny model, in one run.

For an honest engine and engines serving int8- and int4-rounded weights (under
the honest hash), generate the same answers (half greedy, half seeded), audit
each against the reference weights, and print: answers flagged, audited tokens
before the first flag, and the verifier's compute per audited token against the
generation's compute per token (the ratio bounds what auditing a share of
traffic costs).

Usage: python bench/verify.py [--model models/tiny] [--answers 60]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.table import Table

from agoranet.engines.base import collect
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.tinymodel.grammar import dialogues
from agoranet.verify.audit import audit_answer
from agoranet.verify.node_audit import challenge


async def run(model: str, reference: object, cheat: str | None, answers: int) -> dict[str, float]:
    engine = TransformersEngine(loaded=load_model(model), cheat=cheat)
    questions = [d[-2]["content"] for d in dialogues(answers, seed=99)]
    flagged = tokens = first = 0
    generate_s = audit_s = 0.0
    try:
        for i, question in enumerate(questions):
            request = challenge(i, question, engine.models()[0].name, 40, seed_base=0)
            started = time.perf_counter()
            _, found, _ = await collect(engine.stream(await engine.prepare(request)))
            generate_s += time.perf_counter() - started
            started = time.perf_counter()
            result = audit_answer(reference, request, [t.token_id or 0 for t in found],
                                  [t.logprob for t in found])
            audit_s += time.perf_counter() - started
            tokens += result.tokens
            if result.flagged:
                flagged += 1
                first = first or tokens
    finally:
        await engine.aclose()
    return {"flagged": flagged, "answers": len(questions), "tokens": tokens, "first": first,
            "generate_ms": generate_s * 1000 / tokens, "audit_ms": audit_s * 1000 / tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--answers", type=int, default=60)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 110))
    reference = load_model(args.model)
    table = Table(title=f"audits of {args.answers} answers per mode (tiny model, CPU)")
    for column in ("node serves", "flagged answers", "tokens audited", "first flag at token",
                   "generate ms/token", "audit ms/token", "audit / generate"):
        table.add_column(column, justify="left" if column == "node serves" else "right")
    for cheat in (None, "int8", "int4"):
        with console.status(f"{cheat or 'honest'} weights"):
            r = asyncio.run(run(args.model, reference, cheat, args.answers))
        table.add_row(cheat or "honest weights", f"{r['flagged']:.0f}/{r['answers']:.0f}",
                      f"{r['tokens']:.0f}", f"{r['first']:.0f}" if r["first"] else "-",
                      f"{r['generate_ms']:.2f}", f"{r['audit_ms']:.2f}",
                      f"{r['audit_ms'] / r['generate_ms']:.3f}")
    console.print(table)
    console.print("auditing 2% of traffic costs about 0.02 x the ratio in the last column "
                  "of the node's generation compute")


if __name__ == "__main__":
    main()
