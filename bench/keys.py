"""What gateway keys cost per request: a keyed gateway against an ``--open`` one.

Both gateways sit in front of the same instant upstream (`bench/instant_upstream.py`,
an OpenAI-shaped stub that answers at once), so the difference is the gateway's own
work: on the keyed one, each request looks its key up (SHA-256, one indexed read and
its chain), then reserves its worst case along the chain in one ``BEGIN IMMEDIATE``
SQLite transaction and settles it in another. The key used sits two levels under the
owner (owner > team > agent), so three keys are reserved per request.

Measured, interleaved round by round (the order alternates) so drift hits both:

- latency of a 1-token non-streamed request, one client (median and p90 per gateway,
  the added milliseconds, and the ratio keyed / open);
- requests per second with 16 concurrent clients (ratio keyed / open).

Usage: python bench/keys.py [--rounds 30] [--per-round 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from agoranet.node.launcher import free_port, wait_healthy

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
CONCURRENT = 16


@contextmanager
def process(args: list[str], health: str) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_healthy(child, health, 60)
        yield child
    finally:
        child.terminate()
        child.wait(timeout=20)


def gateway(stack: ExitStack, upstream: str, *extra: str) -> tuple[str, Path]:
    home = Path(tempfile.mkdtemp(prefix="agoranet-bench-keys-"))
    port = free_port()
    stack.enter_context(process(
        [sys.executable, "-m", "agoranet", "gateway", "--node", upstream, "--spend-log",
         str(home / "spend.sqlite"), "--port", str(port), *extra],
        f"http://127.0.0.1:{port}/health"))
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not httpx.get(f"{root}/agoranet/nodes").json()["nodes"][0]["models"]:
        if time.monotonic() > deadline:
            raise SystemExit("the gateway never read the upstream's offer")
        time.sleep(0.1)
    return root, home


def mint(root: str, key: str, name: str, budget: int) -> str:
    made = httpx.post(f"{root}/agoranet/keys", headers={"Authorization": f"Bearer {key}"},
                      json={"name": name, "budget": budget})
    made.raise_for_status()
    return str(made.json()["key"])


def latencies(client: httpx.Client, root: str, headers: dict[str, str], count: int
              ) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        reply = client.post(f"{root}/v1/chat/completions", json=BODY, headers=headers)
        out.append((time.perf_counter() - start) * 1000)
        reply.raise_for_status()
    return out


async def throughput(root: str, headers: dict[str, str], count: int) -> float:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
            max_connections=CONCURRENT)) as client:
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                (await client.post(f"{root}/v1/chat/completions", json=BODY,
                                   headers=headers)).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENT)))
        return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=20)
    args = parser.parse_args()
    with ExitStack() as stack:
        port = free_port()
        stack.enter_context(process(
            [sys.executable, str(Path(__file__).with_name("instant_upstream.py")), "--port",
             str(port)], f"http://127.0.0.1:{port}/health"))
        upstream = f"http://127.0.0.1:{port}/v1"
        open_root, _ = gateway(stack, upstream, "--open")
        keyed_root, home = gateway(stack, upstream)
        owner = (home / "owner.key").read_text().strip()
        agent = mint(keyed_root, mint(keyed_root, owner, "team", 10**15), "agent", 10**14)
        targets = {"open": (open_root, {}),
                   "keyed": (keyed_root, {"Authorization": f"Bearer {agent}"})}
        samples: dict[str, list[float]] = {name: [] for name in targets}
        rates: dict[str, list[float]] = {name: [] for name in targets}
        with httpx.Client(timeout=60) as client:
            for root, headers in targets.values():  # warm-up
                latencies(client, root, headers, 20)
                asyncio.run(throughput(root, headers, 64))
            for round_ in range(args.rounds):
                order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
                for name in order:
                    root, headers = targets[name]
                    samples[name] += latencies(client, root, headers, args.per_round)
                    rates[name].append(asyncio.run(throughput(root, headers,
                                                              4 * CONCURRENT)))
    print(f"{args.rounds} rounds x {args.per_round} sequential requests, plus "
          f"{4 * CONCURRENT} requests over {CONCURRENT} clients per round, interleaved")
    print(f"{'gateway':8} {'p50 ms':>8} {'p90 ms':>8} {'req/s':>8}")
    for name in targets:
        p90 = statistics.quantiles(samples[name], n=10)[-1]
        print(f"{name:8} {statistics.median(samples[name]):8.2f} {p90:8.2f} "
              f"{statistics.median(rates[name]):8.1f}")
    open_p50, keyed_p50 = (statistics.median(samples[n]) for n in ("open", "keyed"))
    open_rate, keyed_rate = (statistics.median(rates[n]) for n in ("open", "keyed"))
    print(f"key check + reservation: +{keyed_p50 - open_p50:.2f} ms per request at p50, "
          f"latency ratio keyed/open {keyed_p50 / open_p50:.3f}, "
          f"throughput ratio keyed/open {keyed_rate / open_rate:.3f}")


if __name__ == "__main__":
    main()
