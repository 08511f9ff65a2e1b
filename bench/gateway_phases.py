"""Where a chat request's time goes in the gateway, moment by moment.

An ``agoranet gateway`` runs in front of ``bench/instant_upstream.py`` (an upstream that
answers at once, so what is measured is the gateway's own work) with
``bench/phase_stamps/`` on ``PYTHONPATH``: each non-streamed 1-token chat request is
stamped inside the gateway process as it enters and leaves the functions it passes
through (reading the body, validating and ranking, the budget's reservation, the
request to the node and its answer's headers, each SSE event parsed and checked, the
accounting and spend row, the answer built and rendered, the response handed to the
server, the request's metrics and log line; see ``bench/phase_stamps/sitecustomize.py``).
Requests go one at a time, alternately straight to the upstream and through the
gateway. Prints, for each moment, the median microseconds since the request reached
the gateway (the first tenth left out as warm-up), then the direct and gateway p50 seen
by the client and what the gateway added.

The stamps cost a few microseconds each; the figures are a map, the latency goal is
bench/gateway.py's (over a real node).

Usage: python bench/gateway_phases.py [--rounds 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from agoranet.node.launcher import free_port, running_command, wait_healthy

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from node_phases import medians, stamps_by_request  # noqa: E402

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0,
        "max_tokens": 1}


async def rounds(direct: str, gateway: str, count: int) -> dict[str, list[float]]:
    """Client-side milliseconds of ``count`` requests to each, interleaved."""
    seen: dict[str, list[float]] = {"direct": [], "gateway": []}
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(20):  # warm up connections and caches
            for base in (direct, gateway):
                (await client.post(f"{base}/chat/completions", json=BODY)).raise_for_status()
        for _ in range(count):
            for name, base in (("direct", direct), ("gateway", gateway)):
                started = time.perf_counter()
                (await client.post(f"{base}/chat/completions", json=BODY)).raise_for_status()
                seen[name].append((time.perf_counter() - started) * 1000)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="agoranet-gw-phases-") as folder:
        work = Path(folder)
        stamps = work / "stamps"
        stamps.mkdir()
        port = free_port()
        upstream = subprocess.Popen([sys.executable, str(BENCH / "instant_upstream.py"),
                                     "--port", str(port)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT)
        env = {"AGORANET_PHASE_STAMPS": str(stamps), "PYTHONPATH": os.pathsep.join(
            [str(BENCH / "phase_stamps"), *filter(None, [os.environ.get("PYTHONPATH")])])}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # for the gateway's process only: this one has imported
        try:
            wait_healthy(upstream, f"http://127.0.0.1:{port}/health", 60)
            direct = f"http://127.0.0.1:{port}/v1"
            with running_command(["gateway", "--open", "--node", direct, "--spend-log",
                                  str(work / "spend.sqlite")],
                                 output=work / "gateway.log") as gateway:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name)
                    else:
                        os.environ[name] = value
                with console.status(f"{args.rounds} rounds, direct and through the gateway"):
                    seen = asyncio.run(rounds(direct, gateway, args.rounds))
        finally:
            upstream.terminate()
            upstream.wait(timeout=20)
        requests = stamps_by_request(stamps)
    moments = medians(requests, False)
    if not moments:
        raise SystemExit("no stamps were written: is bench/phase_stamps/ importable?")
    on_cpu = medians(requests, False, cpu=True)
    table = Table(title="a 1-token chat request in the gateway: median µs since it arrived, "
                  "and the event loop thread's CPU µs by then (cpu)")
    table.add_column("moment")
    table.add_column("µs", justify="right")
    table.add_column("cpu", justify="right")
    for name in sorted(moments, key=moments.__getitem__):
        table.add_row(name, f"{moments[name]:,.0f}",
                      f"{on_cpu[name]:,.0f}" if name in on_cpu else "")
    console.print(table)
    direct_ms = statistics.median(seen["direct"])
    gateway_ms = statistics.median(seen["gateway"])
    console.print(f"client p50: direct {direct_ms:.3f} ms, through the gateway "
                  f"{gateway_ms:.3f} ms: the gateway adds {gateway_ms - direct_ms:.3f} ms "
                  f"(stamps included)", markup=False)


if __name__ == "__main__":
    main()
