"""Where a request's time goes in the node, moment by moment, unpaid beside paid.

Runs ``bench/payments.py``'s latency rounds (the tiny model, one output token, an
unpaid and a paid request interleaved, ``--rounds`` each) with
``bench/phase_stamps/`` on ``PYTHONPATH``: inside both node processes each completion
request is stamped as it enters and leaves the functions it passes through (the
payment's decode, signature check, the voucher's SQL and sync, tokenising,
generation, the receipt, the charge; see ``bench/phase_stamps/sitecustomize.py``).
Prints, for each moment, the median microseconds since the request reached the node
for the unpaid and the paid request (the first tenth of the requests left out as
warm-up) and, for the moments on the event loop's thread, that thread's CPU time since
the request arrived (where the two grow alike the loop was working, not waiting), then
the bench's own figures, so what payment adds can be read against the
steps that add it: work on the event loop before tokenising starts, the voucher's
sync ending after tokenising, the receipt before the headers.

The stamps cost a few microseconds each (both requests pay them); the figures are a
map, the latency goal is bench/payments.py's.

Usage: python bench/node_phases.py [--rounds 300] [--model models/tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
WARM_UP = 0.1  # the share of the first requests left out


def stamps_by_request(folder: Path) -> list[dict[str, object]]:
    requests: list[dict[str, object]] = []
    for path in sorted(folder.glob("*.jsonl")):
        requests.extend(json.loads(line) for line in path.read_text(encoding="utf-8")
                        .splitlines())
    return requests


def medians(requests: list[dict[str, object]], paid: bool, *, cpu: bool = False
            ) -> dict[str, float]:
    """Each moment's median microseconds since arrival (a moment's first stamp); with
    ``cpu``, the event loop thread's CPU microseconds since arrival instead, for the
    moments stamped on that thread (the rest of the time it waited: for the interpreter's
    lock, the disk, a thread's answer)."""
    chosen = [r for r in requests if r["paid"] is paid]
    chosen = chosen[int(len(chosen) * WARM_UP):]
    moments: dict[str, list[float]] = {}
    for request in chosen:
        stamps = request["stamps"]
        assert isinstance(stamps, list)
        start = stamps[0][2 if cpu else 1]
        seen: set[str] = set()
        for name, at, loop_cpu in stamps:
            if name not in seen:
                seen.add(name)
                value = loop_cpu if cpu else at
                if value is not None:
                    moments.setdefault(name, []).append((value - start) / 1000)
    return {name: statistics.median(values) for name, values in moments.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--model", default="models/tiny")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="agoranet-phases-") as folder:
        env = dict(os.environ, AGORANET_PHASE_STAMPS=folder, PYTHONPATH=os.pathsep.join(
            [str(BENCH / "phase_stamps"), *filter(None, [os.environ.get("PYTHONPATH")])]))
        with console.status(f"running bench/payments.py ({args.rounds} rounds) with stamps"):
            run = subprocess.run(
                [sys.executable, str(BENCH / "payments.py"), "--no-postgres", "--paid", "50",
                 "--rounds", str(args.rounds), "--model", args.model],
                env=env, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            console.print(run.stdout[-3000:], run.stderr[-3000:], markup=False)
            raise SystemExit(f"bench/payments.py failed (exit {run.returncode})")
        requests = stamps_by_request(Path(folder))
    unpaid, paid = medians(requests, False), medians(requests, True)
    if not unpaid or not paid:
        raise SystemExit("no stamps were written: is bench/phase_stamps/ importable?")
    unpaid_cpu, paid_cpu = medians(requests, False, cpu=True), medians(requests, True, cpu=True)
    table = Table(title="a completion request in the node: median µs since it arrived, and "
                  "the event loop thread's CPU µs by then (cpu)")
    table.add_column("moment")
    for column in ("unpaid", "cpu", "paid", "cpu"):
        table.add_column(column, justify="right")
    for name in sorted(set(unpaid) | set(paid), key=lambda n: paid.get(n, unpaid.get(n, 0))):
        table.add_row(name, *(f"{column[name]:,.0f}" if name in column else ""
                              for column in (unpaid, unpaid_cpu, paid, paid_cpu)))
    console.print(table)
    summary = [line for line in run.stdout.splitlines()
               if "unpaid (--free)" in line or "paid (batch" in line or "payment adds" in line]
    console.print("\n".join(summary), markup=False)


if __name__ == "__main__":
    main()
