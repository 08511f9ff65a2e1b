"""The gateway's overhead against a direct request, and against LiteLLM's proxy.

One node serves the tiny model. In one run, the same requests go (1) straight to
the node, (2) through a bare Starlette+httpx proxy on the gateway's own transport
(`bench/bare_proxy.py`, the floor of this stack), (3) through `agoranet gateway`, and (4) through LiteLLM's
proxy in front of the same node, interleaved round by round so drift hits all:

- added latency, p50 and p99, of a 1-token non-streamed request;
- added time to first token of a streamed request;
- requests per second with 32 concurrent streams of 16 tokens, for every row.

A second set of rows puts the same proxies in front of an instant upstream
(`bench/instant_upstream.py`, an OpenAI-shaped stub that answers at once), so
the gateway and LiteLLM are compared as proxies, not bounded by the node.
With ``--paid``, a paid node on a dev chain is measured direct (a payer with one
channel per concurrent stream, since a channel carries one request at a time)
and through the paying gateway, whose one channel per node carries its paid
requests to that node one at a time: its req/s row shows that limit.

LiteLLM is installed by the bench's own setup (`make bench-gateway` makes
`.bench/litellm`), never by the package; pass `--litellm PATH` to its `litellm`
command, or `--no-litellm` to skip it.

Usage: python bench/gateway.py [--model models/tiny] [--rounds 200] [--litellm PATH] [--paid]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from agoranet.node.launcher import free_port, running_command, running_node, wait_healthy

MASTER_KEY = "sk-agoranet-bench-0123456789abcdef"  # LiteLLM refuses to start without one
INSTANT = "instant: "  # rows in front of the instant upstream
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0}


@contextmanager
def litellm_proxy(command: str, node_url: str) -> Iterator[str]:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="agoranet-litellm-"))
    config = workdir / "config.yaml"
    config.write_text(
        "model_list:\n  - model_name: tiny\n    litellm_params:\n"
        f"      model: openai/tiny\n      api_base: {node_url}\n      api_key: unused\n"
        "litellm_settings:\n  drop_params: true\n"
        f"general_settings:\n  master_key: {MASTER_KEY}\n"
    )
    process = subprocess.Popen([str(Path(command).resolve()), "--config", str(config), "--port", str(port),
                                "--num_workers", "1"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, f"{url}/health/liveliness", timeout=180)
        yield f"{url}/v1"
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def bare_proxy(node_url: str) -> Iterator[str]:
    """``bench/bare_proxy.py`` in front of the node: the stack's floor, no gateway logic."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("bare_proxy.py")),
                                node_url, "--port", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}/health", 60)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=20)


@contextmanager
def instant_upstream() -> Iterator[str]:
    """``bench/instant_upstream.py``: an OpenAI-shaped stub that answers at once."""
    port = free_port()
    process = subprocess.Popen([sys.executable,
                                str(Path(__file__).with_name("instant_upstream.py")),
                                "--port", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}/health", 60)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=20)


def logs(stack: ExitStack) -> Path:
    """A folder for the servers' output (their per-request log lines among it): written to
    files, not drained by a thread of this process, which would take the measuring loop's
    CPU and GIL each time a line arrives and count it against the server that logged it."""
    folder = Path(tempfile.mkdtemp(prefix="agoranet-bench-gw-"))
    stack.callback(shutil.rmtree, folder, True)
    return folder


def proxies(stack: ExitStack, upstream: str, litellm: str | None, label: str = ""
            ) -> dict[str, Target]:
    """Direct, the bare proxy, the gateway and (if installed) LiteLLM, all before ``upstream``."""
    work = logs(stack)
    gateway = stack.enter_context(running_command(
        ["gateway", "--open", "--node", upstream, "--spend-log", str(work / "spend.sqlite")],
        output=work / "gateway.log"))
    targets: dict[str, Target] = {
        f"{label}direct": (upstream, []),
        f"{label}bare proxy (floor)": (stack.enter_context(bare_proxy(upstream)), []),
        f"{label}agoranet gateway": (gateway, [])}
    if litellm is not None:
        targets[f"{label}LiteLLM proxy"] = (stack.enter_context(litellm_proxy(litellm, upstream)),
                                            [])
    return targets


async def latency(client: httpx.AsyncClient, base: str) -> float:
    started = time.perf_counter()
    response = await client.post(f"{base}/chat/completions", json={**BODY, "max_tokens": 1})
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


async def first_token(client: httpx.AsyncClient, base: str, tokens: int = 16) -> tuple[float, int]:
    started = time.perf_counter()
    ttft = 0.0
    chunks = 0
    body = {**BODY, "max_tokens": tokens, "stream": True}
    async with client.stream("POST", f"{base}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                chunks += 1
                if not ttft:
                    ttft = (time.perf_counter() - started) * 1000
    return ttft, chunks


STREAMS = 32


async def throughput(clients: list[httpx.AsyncClient], base: str, requests: int = 96) -> float:
    """Requests per second with ``STREAMS`` concurrent streams; stream ``i`` uses client
    ``i`` mod the pool (a paid target has one client, one channel, per stream)."""
    async def worker(index: int, count: int) -> None:
        for _ in range(count):
            await first_token(clients[index % len(clients)], base)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i, requests // STREAMS) for i in range(STREAMS)))
    return STREAMS * (requests // STREAMS) / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Base URL, and how to pay it: one auth (channel) per concurrent stream; none if free.
Target = tuple[str, list[httpx.Auth]]


async def measure(targets: dict[str, Target], rounds: int) -> dict[str, dict[str, float]]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    pools = {name: [httpx.AsyncClient(timeout=120, limits=limits, headers=headers, auth=auth)
                    for auth in (auths or [None])]
             for name, (_, auths) in targets.items()}
    clients = {name: pool[0] for name, pool in pools.items()}
    bases = {name: base for name, (base, _) in targets.items()}
    try:
        for name, base in bases.items():  # warm up connections, caches and channels
            for client in pools[name]:
                for _ in range(2):
                    await latency(client, base)
        lat: dict[str, list[float]] = {k: [] for k in targets}
        ttft: dict[str, list[float]] = {k: [] for k in targets}
        for _ in range(rounds):
            for name, base in bases.items():
                lat[name].append(await latency(clients[name], base))
        for _ in range(max(10, rounds // 5)):
            for name, base in bases.items():
                ttft[name].append((await first_token(clients[name], base))[0])
        rps = {name: await throughput(pools[name], base) for name, base in bases.items()}
    finally:
        for pool in pools.values():
            for client in pool:
                await client.aclose()
    return {name: {"p50": statistics.median(lat[name]), "p99": pct(lat[name], 0.99),
                   "ttft": statistics.median(ttft[name]), "rps": rps[name]} for name in targets}


def paid_targets(stack: ExitStack, model: str) -> dict[str, Target]:
    """A paid node on a fresh dev chain; a payer for direct requests; a gateway that pays."""
    import os

    from eth_account import Account

    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.devchain import start_devchain
    from agoranet.payments.pay.httpx_auth import PayerAuth
    from agoranet.payments.pay.payer import Payer
    from agoranet.payments.wallet import create_keystore

    os.environ.setdefault("AGORANET_WALLET_PASSWORD", "bench")
    work = Path(tempfile.mkdtemp(prefix="agoranet-bench-paid-"))
    stack.callback(shutil.rmtree, work, True)
    chain = start_devchain()
    stack.callback(chain.stop)
    keys = {}
    for name, index in (("node", 3), ("gateway", 6)):
        keys[name] = work / f"{name}.json"
        create_keystore(keys[name], os.environ["AGORANET_WALLET_PASSWORD"], scrypt_n=2**10,
                        private_key=bytes.fromhex(chain.private_keys[index].removeprefix("0x")))
    node = stack.enter_context(running_node(
        ["--model", model, "--served-model-name", "tiny", "--max-active", "32",
         "--max-queue", "256", "--no-fine-tuning", "--no-adapters", "--price-in", "1000000",
         "--price-out", "3000000", "--rpc-url", chain.rpc_url, "--keystore", str(keys["node"]),
         "--ledger", str(work / "ledger.sqlite")], output=work / "node.log"))
    gateway = stack.enter_context(running_command(
        ["gateway", "--open", "--node", node, "--rpc-url", chain.rpc_url, "--keystore",
         str(keys["gateway"]), "--deposit", "50000000", "--spend-log", str(work / "spend.sqlite")],
        output=work / "gateway.log"))
    auths: list[httpx.Auth] = []
    for index in range(STREAMS):  # a channel carries one request at a time
        payer = Payer(node, chain.web3(), resolve_addresses(chain.chain_id),
                      account=Account.from_key(chain.private_keys[7]),
                      state_dir=work / f"payer-{index}")
        if payer.state is None:
            payer.open(1_000_000)
        stack.callback(payer.close)
        auths.append(PayerAuth(payer, max_per_request=200))
    return {"direct, paid": (node, auths), "agoranet gateway, paid": (gateway, [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--litellm", default=".bench/litellm/bin/litellm")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--paid", action="store_true",
                        help="Also a paid node on a dev chain: direct with a payer vs the gateway.")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 120))
    use_litellm = not args.no_litellm and Path(args.litellm).exists()
    if not args.no_litellm and not use_litellm:
        console.print(f"[yellow]no LiteLLM at {args.litellm}: run `make bench-gateway`[/]")
    litellm = args.litellm if use_litellm else None
    with ExitStack() as stack:
        with console.status("nodes, proxies, gateways"):
            node = stack.enter_context(running_node(
                ["--model", args.model, "--served-model-name", "tiny", "--free", "--max-active",
                 "32", "--max-queue", "256", "--no-fine-tuning", "--no-adapters"],
                output=logs(stack) / "node.log"))
            targets = proxies(stack, node, litellm)
            targets.update(proxies(stack, stack.enter_context(instant_upstream()), litellm,
                                   INSTANT))
        if args.paid:
            with console.status("dev chain, paid node, paying gateway"):
                targets.update(paid_targets(stack, args.model))
        with console.status("measuring"):
            results = asyncio.run(measure(targets, args.rounds))
    table = Table(title=f"{args.rounds} rounds interleaved; 'added' is over the direct row of "
                        "the same upstream")
    for column in ("path", "p50 ms", "p99 ms", "added p50", "added p99", "ttft ms",
                   "added ttft", "req/s @32"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, r in results.items():
        base = results[f"{INSTANT}direct" if name.startswith(INSTANT) else "direct"]
        table.add_row(name, f"{r['p50']:.2f}", f"{r['p99']:.2f}",
                      f"{r['p50'] - base['p50']:.2f}", f"{r['p99'] - base['p99']:.2f}",
                      f"{r['ttft']:.2f}", f"{r['ttft'] - base['ttft']:.2f}", f"{r['rps']:.1f}")
    console.print(table)
    for label in ("", INSTANT):
        summarise(console, results, label)
    if "direct, paid" in results:
        direct, paid, gw_paid = (results["direct"], results["direct, paid"],
                                 results["agoranet gateway, paid"])
        console.print(f"paid: gateway adds {gw_paid['p50'] - paid['p50']:.2f} ms at p50 over a "
                      f"direct paid request; payment itself adds {paid['p50'] - direct['p50']:.2f}"
                      f" ms to a direct request; req/s at 32 streams, gateway / direct: "
                      f"{gw_paid['rps'] / paid['rps']:.2f} (the gateway pays a node over one "
                      "channel, one request at a time; direct uses a channel per stream)")


def summarise(console: Console, results: dict[str, dict[str, float]], label: str) -> None:
    """The gateway against the floor and against LiteLLM, for one upstream."""
    direct, gw = results[f"{label}direct"], results[f"{label}agoranet gateway"]
    bare = results[f"{label}bare proxy (floor)"]
    upstream = "instant upstream" if label else "tiny model node"
    console.print(f"{upstream}: gateway req/s vs direct {gw['rps'] / direct['rps']:.2f}; the "
                  f"gateway's own logic adds {gw['p50'] - bare['p50']:.2f} ms at p50 over a bare "
                  f"proxy on the same stack, which adds {bare['p50'] - direct['p50']:.2f} ms")
    lite = results.get(f"{label}LiteLLM proxy")
    if lite is not None:
        added_gw, added_lite = gw["p50"] - direct["p50"], lite["p50"] - direct["p50"]
        console.print(f"{upstream}: added p50 latency, agoranet / LiteLLM: "
                      f"{added_gw / added_lite:.2f}; req/s at 32 streams, agoranet / LiteLLM: "
                      f"{gw['rps'] / lite['rps']:.2f}")


if __name__ == "__main__":
    main()
