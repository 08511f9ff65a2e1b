"""Fuzz a live paid node and a live gateway with generated inputs; fail on any 500.

Starts a dev chain, a paid ``agoranet node`` serving the tiny model, and an
``agoranet gateway`` in front of a fake node that answers garbage (see
``tests/fuzz/harness.py``), then sends ``--count`` inputs split over the targets:
schema-driven requests from each process's ``/openapi.json`` (schemathesis),
broken bodies, mutated x402 payments, query strings, and node garbage. It prints
the answers per target and status class, and exits non-zero if any input got a
500 (or, for client input, any status >= 500), an answer that is not OpenAI's
error JSON, a cut-off stream or no answer; if a process died; or if anything was
charged for a refused input (the node's ledger, the payers, the chain).

Usage: python bench/fuzz.py [--count 10000] [--model models/tiny] [--target NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
# The harness lives with the tests (tests/fuzz); put tests/ first so that ``fuzz`` is
# that package and not this script.
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.harness import TARGETS, Fuzzer, Verdict, live_network  # noqa: E402

CLASSES = ["2xx", "3xx", "402", "4xx", "upstream 502/503", "FAILED"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="inputs in all")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "tiny")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS),
                        help="only these targets (repeatable); their shares are kept")
    args = parser.parse_args()
    console = Console(width=max(120, Console().width))
    if not (args.model / "model.safetensors").exists():
        from agoranet.tinymodel import SIZES, build_tiny_model

        build_tiny_model(args.model, SIZES["default"])
    chosen = {t: s for t, s in TARGETS.items() if not args.target or t in args.target}
    total = sum(chosen.values())
    counts = {t: round(args.count * s / total) for t, s in chosen.items()}
    counts[next(iter(counts))] += args.count - sum(counts.values())

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agoranet-fuzz-") as tmp:
        console.print("starting a dev chain, a paid node, a fake node and a gateway ...")
        with live_network(Path(tmp), args.model) as live, Progress(
                TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console) as progress:
            tasks = {t: progress.add_task(t, total=n) for t, n in counts.items()}
            fuzzer = Fuzzer(live, progress=lambda t: progress.advance(tasks[t]))
            try:
                verdict = fuzzer.run(counts)
            finally:
                fuzzer.close()
    report(console, verdict, time.perf_counter() - started)
    return 0 if verdict.ok else 1


def report(console: Console, verdict: Verdict, seconds: float) -> None:
    table = Table(title=f"{verdict.inputs} inputs in {seconds:.0f} s")
    table.add_column("target")
    for name in [*CLASSES, "other", "total"]:
        table.add_column(name, justify="right")
    totals: Counter[str] = Counter()

    def row(counter: Counter[str]) -> list[str]:
        other = sum(n for c, n in counter.items() if c not in CLASSES)
        return [*(str(counter.get(c, 0)) for c in CLASSES), str(other),
                str(sum(counter.values()))]

    for target, counter in verdict.counts.items():
        totals.update(counter)
        table.add_row(target, *row(counter))
    table.add_row("all", *row(totals), style="bold")
    console.print(table)
    if verdict.failures:
        kinds = Counter((f.target, f.what[:120]) for f in verdict.failures)
        console.print(f"[red]{len(verdict.failures)} failures[/red], by kind:")
        for (target, what), n in kinds.most_common(20):
            example = next(f for f in verdict.failures if (f.target, f.what[:120]) ==
                           (target, what))
            console.print(f"  {n:5d}  {target}: {what}\n         input: {example.given[:400]}",
                          markup=False, highlight=False)
    for check in verdict.checks:
        console.print(f"[red]check failed:[/red] {check}", highlight=False)
    for process, lines in verdict.tracebacks.items():
        if lines:
            console.print(f"{process} log: {len(lines)} tracebacks (not all are failures: "
                          "a node's garbage is logged where the gateway fails over)")
            for line, n in Counter(lines).most_common(8):
                console.print(f"  {n:5d}  {line[:200]}", markup=False, highlight=False)
    console.print("[green]all checks held[/green]" if verdict.ok else "[red]FAILED[/red]")


if __name__ == "__main__":
    sys.exit(main())
