"""What paying for a tool costs: a trivial tool's latency unpaid vs paid, in one run.

On a dev chain, with real processes: ``agoranet tools serve agoranet.testing.tool_kit:tools``
twice, one ``--free`` (the baseline) and one paid to a dev account (claiming with its
default thresholds, so no claim runs during the bench), and a keyed gateway with a
wallet that buys from the paid one (``--tools URL``). The tool is ``echo`` (1,000 base
units a call). Each round calls it once in every way below, in turn, so each sees the
same load; the first calls (which open channels) are left out:

- HTTP ``POST /tools/echo``: unpaid (the free server: the baseline); paid with a
  batch-settlement channel (a voucher signed by the x402 SDK client before the timed
  request, checked, persisted and charged by the server, a signed receipt back); paid
  with ``exact`` (an EIP-3009 authorization the server verifies, then settles on chain
  before it answers: one transaction a call), every ``--exact-every`` rounds;
- MCP ``tools/call`` with the official client: unpaid (free server), paid with a channel
  (x402's MCP transport: the voucher in ``_meta``); through the gateway's MCP server
  (``tool__echo``: the key's budget reserved and settled, the gateway's own channel
  voucher, the spend log) and through the gateway's ``POST /agoranet/tools/call``.

Latency is the client's, from sending the (already signed) call to reading its answer;
client-side signing is timed apart. It prints p50 and p99 per way and each one's ratio
and difference to the unpaid HTTP baseline (and MCP to unpaid MCP). The goal: a channel
payment adds under 1 ms at p50. The buyer's channel is funded once, for the whole run
(the SDK client's default deposit covers five calls: every fifth would wait for a top-up
settled on chain). For scale it also prints the disk's flush (``fdatasync`` of a 4 KiB
write in the run's folder: what the seller's durable voucher costs at least on this
machine's disk, measured after the rounds).

Usage: python bench/tools.py [--rounds 150] [--exact-every 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
from eth_account import Account
from eth_account.signers.local import LocalAccount
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from rich.console import Console
from rich.table import Table
from x402 import x402Client
from x402.mechanisms.evm.batch_settlement.client.config import BatchSettlementDepositPolicy
from x402.mechanisms.evm.batch_settlement.client.scheme import BatchSettlementEvmScheme
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC
from x402.schemas import PaymentPayload, PaymentRequired, SettleResponse
from x402.schemas.hooks import PaymentResponseContext

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain, start_devchain
from agoranet.config import ChainSettings
from agoranet.node.launcher import running_command
from agoranet.payments import x402wire
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore, fund_dev

PASSWORD = "bench-only-password"
TOOL = "echo"
ARGS = {"text": "ping"}
PAYMENT_META, RESPONSE_META = "x402/payment", "x402/payment-response"
SELLER, GATEWAY = 3, 5  # dev accounts
Call = Callable[[], Awaitable[None]]


def sdk_client(chain: DevChain, payer: LocalAccount, scheme: str,
               deposit_calls: int = 5) -> x402Client:
    """The x402 SDK's client with both EVM schemes, choosing ``scheme`` from a 402; a
    channel deposits for ``deposit_calls`` calls at a time (the SDK's default is 5: a
    top-up, one on-chain transaction the seller settles before it answers, every fifth
    call)."""
    client = x402Client(payment_requirements_selector=lambda _v, reqs: next(
        r for r in reqs if r.scheme == scheme))
    client.set_spend_controls({"allowed_assets": [{
        "network": chain.network, "asset": chain.stablecoin, "max_amount_per_payment": "1000000"}]})
    register_exact_evm_client(client, EthAccountSigner(payer))
    client.register("eip155:*", BatchSettlementEvmScheme(
        EthAccountSignerWithRPC(payer, chain.rpc_url),
        BatchSettlementDepositPolicy(deposit_multiplier=max(3, deposit_calls))))
    return client


class Timings:
    """Samples per way, in seconds; client signing apart."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    async def time(self, way: str, call: Call) -> None:
        started = time.perf_counter()
        await call()
        self.samples.setdefault(way, []).append(time.perf_counter() - started)

    def add(self, way: str, seconds: float) -> None:
        self.samples.setdefault(way, []).append(seconds)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class HttpPayer:
    """Pays ``echo`` over HTTP with the SDK client: the 402's requirements once, then a
    payment signed ahead of each timed call, its settle response fed back."""

    def __init__(self, http: httpx.AsyncClient, root: str, client: x402Client,
                 timings: Timings, sign_label: str) -> None:
        self.http, self.url, self.client = http, f"{root}/tools/{TOOL}", client
        self.timings, self.sign_label = timings, sign_label
        self.required: PaymentRequired | None = None

    async def prepare(self) -> PaymentPayload:
        if self.required is None:
            response = await self.http.post(self.url, json=ARGS)
            assert response.status_code == 402, response.text
            self.required = x402wire.decode_payment_required(
                response.headers[x402wire.PAYMENT_REQUIRED])
        started = time.perf_counter()
        payload = await self.client.create_payment_payload(self.required)
        self.timings.add(self.sign_label, time.perf_counter() - started)
        assert isinstance(payload, PaymentPayload)
        return payload

    async def call(self, way: str) -> None:
        payload = await self.prepare()
        header = {x402wire.PAYMENT_SIGNATURE: x402wire.encode_model(payload)}
        holder: dict[str, httpx.Response] = {}

        async def post() -> None:
            holder["r"] = await self.http.post(self.url, json=ARGS, headers=header)

        await self.timings.time(way, post)
        response = holder["r"]
        assert response.status_code == 200, response.text
        settle = SettleResponse.model_validate(x402wire.decode_json(
            response.headers[x402wire.PAYMENT_RESPONSE], "PAYMENT-RESPONSE"))
        await self.client.handle_payment_response(PaymentResponseContext(
            payment_payload=payload, requirements=payload.accepted, settle_response=settle))


@asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str] | None = None
                      ) -> AsyncIterator[ClientSession]:
    http = httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(60.0))
    async with http, streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


class McpPayer:
    """Pays ``echo`` over MCP (x402's MCP transport) with a channel."""

    def __init__(self, session: ClientSession, client: x402Client, timings: Timings) -> None:
        self.session, self.client, self.timings = session, client, timings
        self.required: PaymentRequired | None = None

    async def call(self, way: str) -> None:
        if self.required is None:
            unpaid = await self.session.call_tool(TOOL, ARGS)
            self.required = PaymentRequired.model_validate(unpaid.structured_content)
        payload = await self.client.create_payment_payload(self.required)
        assert isinstance(payload, PaymentPayload)
        meta = {PAYMENT_META: payload.model_dump(by_alias=True, exclude_none=True, mode="json")}
        holder: dict[str, Any] = {}

        async def call() -> None:
            holder["r"] = await self.session.call_tool(TOOL, ARGS, meta=meta)

        await self.timings.time(way, call)
        result = holder["r"]
        assert not result.is_error, result.content
        settle = SettleResponse.model_validate((result.meta or {})[RESPONSE_META])
        await self.client.handle_payment_response(PaymentResponseContext(
            payment_payload=payload, requirements=payload.accepted, settle_response=settle))


async def measure(args: argparse.Namespace, chain: DevChain, free: str, paid: str,
                  gateway: str, key: str) -> Timings:
    payer: LocalAccount = Account.create()
    fund_dev(chain.web3(), resolve_addresses(chain.chain_id,
                                              ChainSettings(rpc_url=chain.rpc_url)),
             payer.address, stablecoin=1_000_000_000, native=10**18)
    timings = Timings()
    auth = {"Authorization": f"Bearer {key}"}
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=60.0))
        # One channel, HTTP and MCP, its deposit made once for the whole run: a top-up
        # (the SDK's default deposit covers five calls) is an on-chain transaction the
        # seller settles before it answers, ~80 ms, which is what the p99 of 170 ms was.
        batch = sdk_client(chain, payer, "batch-settlement", 2 * args.rounds + 20)
        channel = HttpPayer(http, paid, batch, timings, "client: sign a voucher")
        exact = HttpPayer(http, paid, sdk_client(chain, payer, "exact"), timings,
                          "client: sign EIP-3009")
        mcp_free = await stack.enter_async_context(mcp_session(f"{free}/mcp"))
        mcp_paid = McpPayer(await stack.enter_async_context(mcp_session(f"{paid}/mcp")),
                            batch, timings)
        via_gateway = await stack.enter_async_context(mcp_session(f"{gateway}/mcp", auth))

        async def http_free() -> None:
            response = await http.post(f"{free}/tools/{TOOL}", json=ARGS)
            assert response.status_code == 200, response.text

        async def mcp_unpaid() -> None:
            result = await mcp_free.call_tool(TOOL, ARGS)
            assert not result.is_error, result.content

        async def gateway_mcp() -> None:
            result = await via_gateway.call_tool(f"tool__{TOOL}", ARGS)
            assert not result.is_error, result.content

        async def gateway_http() -> None:
            response = await http.post(f"{gateway}/agoranet/tools/call", headers=auth,
                                       json={"name": TOOL, "arguments": ARGS})
            assert response.status_code == 200, response.text

        warm = Timings()  # channels opened (deposits on chain), connections made
        for _ in range(2):
            await warm.time("", http_free)
            await channel.call("warm")
            await mcp_paid.call("warm")
            await warm.time("", mcp_unpaid)
            await warm.time("", gateway_mcp)
            await warm.time("", gateway_http)
        await exact.call("warm")
        for name in ("warm", "client: sign a voucher", "client: sign EIP-3009"):
            timings.samples.pop(name, None)
        for round_ in range(args.rounds):
            await timings.time("HTTP unpaid", http_free)
            await channel.call("HTTP paid, channel")
            if round_ % args.exact_every == 0:
                await exact.call("HTTP paid, exact (on chain)")
            await timings.time("MCP unpaid", mcp_unpaid)
            await mcp_paid.call("MCP paid, channel")
            await timings.time("gateway MCP tool__echo", gateway_mcp)
            await timings.time("gateway POST tools/call", gateway_http)
    return timings


def flush_floor(folder: Path, count: int = 100) -> list[float]:
    """``count`` timings of the disk's flush of a 4 KiB write (a voucher's durable write
    costs at least one), in seconds."""
    path = folder / "flush-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    samples = []
    try:
        for i in range(count):
            os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)
            started = time.perf_counter()
            os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return samples


def report(timings: Timings, console: Console, args: argparse.Namespace) -> None:
    load = os.getloadavg()
    table = Table(title=f"tool call latency, ms ({args.rounds} rounds; load average "
                        f"{load[0]:.1f} on {os.cpu_count()} CPUs)")
    for column in ("way", "n", "p50", "p99", "p50 ratio", "p50 +ms"):
        table.add_column(column, justify="left" if column == "way" else "right")
    base = {"HTTP": pct(timings.samples["HTTP unpaid"], 0.5),
            "MCP": pct(timings.samples["MCP unpaid"], 0.5)}
    for way, samples in timings.samples.items():
        p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
        against = base["MCP"] if way.startswith("MCP") else base["HTTP"]
        client = way.startswith(("client", "disk"))
        table.add_row(way, str(len(samples)), f"{p50 * 1000:.2f}", f"{p99 * 1000:.2f}",
                      "" if client else f"{p50 / against:.2f}",
                      "" if client else f"{(p50 - against) * 1000:+.2f}")
    console.print(table)
    added = pct(timings.samples["HTTP paid, channel"], 0.5) - base["HTTP"]
    console.print(f"a channel payment adds {added * 1000:.2f} ms at p50 over HTTP (goal: under "
                  f"1 ms; client signing, {pct(timings.samples['client: sign a voucher'], 0.5) * 1000:.2f} "
                  "ms, not counted); ratios are to the unpaid call of the same transport "
                  "(gateway rows: to unpaid HTTP), measured in this run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--exact-every", type=int, default=5,
                        help="an exact call (one on-chain transfer) every this many rounds")
    args = parser.parse_args()
    console = Console()
    os.environ[PASSWORD_ENV_VAR] = PASSWORD
    os.environ["AGORANET_GATEWAY_REFRESH_S"] = "1"
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        with console.status("starting a dev chain, two tool servers and a gateway"):
            chain = start_devchain()
            stack.callback(chain.stop)
            wallets = {}
            for name, index in (("seller", SELLER), ("gateway", GATEWAY)):
                wallets[name] = folder / f"{name}.json"
                create_keystore(wallets[name], PASSWORD, scrypt_n=2**10,
                                private_key=bytes.fromhex(chain.private_keys[index][2:]))
            kit = "agoranet.testing.tool_kit:tools"
            free = stack.enter_context(running_command(
                ["tools", "serve", kit, "--free"], output=folder / "free.log"))
            paid = stack.enter_context(running_command(
                ["tools", "serve", kit, "--rpc-url", chain.rpc_url, "--keystore",
                 str(wallets["seller"]), "--ledger", str(folder / "tools.sqlite")],
                output=folder / "paid.log"))
            free, paid = free.removesuffix("/v1"), paid.removesuffix("/v1")
            gateway = stack.enter_context(running_command(
                ["gateway", "--rpc-url", chain.rpc_url, "--keystore", str(wallets["gateway"]),
                 "--tools", paid, "--deposit", "10000000", "--budget", "1000000000",
                 "--spend-log", str(folder / "gw" / "spend.sqlite")],
                output=folder / "gateway.log")).removesuffix("/v1")
            owner = {"Authorization": "Bearer " + (folder / "gw" / "owner.key").read_text()
                     .strip()}
            deadline = time.monotonic() + 60
            while not any(t["name"] == TOOL for t in httpx.get(
                    f"{gateway}/agoranet/tools", headers=owner, timeout=10).json()["data"]):
                if time.monotonic() > deadline:
                    raise SystemExit("the gateway never listed the tool")
                time.sleep(0.3)
            made = httpx.post(f"{gateway}/agoranet/keys", headers=owner, timeout=30,
                              json={"name": "bench", "budget": 500_000_000})
            made.raise_for_status()
        started = time.perf_counter()
        timings = asyncio.run(measure(args, chain, free, paid, gateway, made.json()["key"]))
        timings.samples["disk: fdatasync 4 KiB"] = flush_floor(folder)
        console.print(f"measured in {time.perf_counter() - started:.0f} s")
        report(timings, console, args)


if __name__ == "__main__":
    main()
