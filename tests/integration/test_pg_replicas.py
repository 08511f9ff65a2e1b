"""Two replicas of one node on one PostgreSQL ledger, behind a round-robin front.

One dev chain and one PostgreSQL server (started by the tests) for the module; two
``agoranet node`` processes under the same key on one ``--ledger postgresql://...``
(leases of 2 s, a claim once the oldest unclaimed charge is a second old), and a
small HTTP front that sends each request to the next replica in turn (skipping one
that refuses connections, as a load balancer's health check would). Buyers pay
through the front with the real payer, so a channel's successive requests land on
alternate replicas. After each scenario the replicas' own claims are awaited and
:func:`agoranet.testing.invariants.assert_money_invariants` checks the money.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from web3 import Web3

from agoranet.chain.addresses import ChainAddresses, resolve_addresses
from agoranet.chain.devchain import DevChain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.node.launcher import free_port
from agoranet.payments import x402wire
from agoranet.payments.channels import escrow_contract
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore, fund_dev
from agoranet.testing.invariants import (
    BuyerBook,
    ChainSnapshot,
    assert_money_invariants,
    chain_snapshot,
)
from cli.clirun import assert_one_line_error, run_subprocess
from integration.node_process import NodeProcess
from pg_testserver import fresh_database, pg_server  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

PASSWORD = "pg-replicas-5c2"
PRICE_IN, PRICE_OUT = 1_000_000, 3_000_000  # 1 and 3 base units per token
HEADROOM = 2_000  # the payer's per-request maximum
DEPOSIT = 1_000_000
LEASE_S = "2"


class Replica(NodeProcess):
    """One test-only node process (its chaos delays streams) on the shared ledger, started
    at once; a test may SIGKILL it."""

    def __init__(self, args: list[str], log: Path) -> None:
        super().__init__(args, log, module="agoranet.testing", env={
            PASSWORD_ENV_VAR: PASSWORD, "AGORANET_NODE_LEDGER_LEASE_S": LEASE_S})
        self.spawn()


class Front:
    """A round-robin HTTP front for the replicas (uvicorn on a thread): each request goes
    to the next replica; a replica that refuses the connection is skipped. Responses
    stream through and name the replica that answered (``x-front-backend``)."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.hits = [0] * len(backends)
        self._next = 0
        self._client: httpx.AsyncClient | None = None
        app = Starlette(routes=[Route("/{path:path}", self._proxy,
                                      methods=["GET", "POST", "DELETE"])])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert time.monotonic() < deadline, "the front did not start"
            time.sleep(0.05)

    async def _proxy(self, request: Request) -> Response:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60.0)
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.raw
                   if k.lower() not in (b"host", b"content-length")]
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        for _ in self.backends:
            index = self._next % len(self.backends)
            self._next += 1
            outgoing = self._client.build_request(request.method, self.backends[index] + target,
                                                  headers=headers, content=body)
            try:
                upstream = await self._client.send(outgoing, stream=True)
            except httpx.ConnectError:
                continue  # down: the next one
            self.hits[index] += 1
            kept = {k: v for k, v in upstream.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            kept["x-front-backend"] = str(index)

            async def relay(upstream: httpx.Response = upstream) -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream.aiter_raw():
                        yield chunk
                finally:
                    await upstream.aclose()

            return StreamingResponse(relay(), status_code=upstream.status_code, headers=kept)
        return JSONResponse({"error": {"message": "no replica answers", "type": "server_error",
                                       "code": "no_backend", "param": None}}, status_code=502)

    def close(self) -> None:
        self._server.should_exit = True  # its loop, and the client's connections, end
        self._thread.join(timeout=10)


@dataclass
class Cluster:
    dev: DevChain
    w3: Web3
    addresses: ChainAddresses
    root: Path
    ledger: str  # the PostgreSQL URL both replicas share
    replicas: list[Replica]
    front: Front
    address: str  # the node's (both replicas') address


@pytest.fixture(scope="module")
def cluster(chain: DevChain, tiny_model: Path, pg_server: str,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    account: LocalAccount = Account.from_key(chain.private_keys[3])
    keystore = root / "node-key.json"
    create_keystore(keystore, PASSWORD, private_key=bytes(account.key), scrypt_n=2**10)
    ledger = fresh_database(pg_server)
    args = ["--model", str(tiny_model), "--price-in", str(PRICE_IN), "--price-out",
            str(PRICE_OUT), "--rpc-url", chain.rpc_url, "--keystore", str(keystore),
            "--ledger", ledger, "--no-fine-tuning", "--no-adapters", "--receipt-every", "8",
            "--chaos-delay-ms", "10", "--chain-state-ttl", "1", "--settle-interval", "0.3",
            "--claim-max-age", "1"]
    replicas = [Replica(args, root / f"replica-{i}.log") for i in range(2)]
    front = None
    try:
        for replica in replicas:
            replica.wait_ready()
        front = Front([r.url for r in replicas])
        addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
        yield Cluster(chain, connect(chain.rpc_url), addresses, root, ledger, replicas, front,
                      account.address)
    finally:
        for replica in replicas:
            replica.stop()
        if front is not None:
            front.close()


@dataclass
class Buyer:
    cluster: Cluster
    payer: Payer
    folder: Path
    before: ChainSnapshot

    @property
    def channel_id(self) -> str:
        assert self.payer.state is not None
        return self.payer.state.channel_id.lower()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.cluster.front.url, auth=PayerAuth(self.payer),
                            timeout=60.0)

    def check(self) -> int:
        """Wait until the replicas let go of the channel and claim all of it; check the
        money. The amount claimed on chain."""
        check_money(self.cluster, [self], self.before)
        return _claimed_on_chain(self.cluster, self.channel_id)


def check_money(cluster: Cluster, buyers: list[Buyer], before: ChainSnapshot) -> None:
    """The money invariants over ``buyers``' channels, once the replicas have claimed them
    (``before``: the chain after every one of them was funded and had deposited)."""
    for b in buyers:
        _wait_claimed(cluster.ledger, b.channel_id)
    report = assert_money_invariants(
        cluster.w3, cluster.addresses, before=before, ledger=cluster.ledger,
        books=[BuyerBook.from_payer_store(b.folder, headroom=HEADROOM) for b in buyers])
    print(report)
    assert len(report.channels) == len(buyers) and all(
        c.vouchers > 0 and c.receipts > 0 and c.charged > 0 for c in report.channels), report
    for b in buyers:
        b.payer.close()


def buyer(cluster: Cluster, name: str) -> Buyer:
    account: LocalAccount = Account.create()
    fund_dev(cluster.w3, cluster.addresses, account.address, stablecoin=2 * DEPOSIT,
             native=10**18)
    folder = cluster.root / f"payer-{name}"
    payer = Payer(cluster.front.url, cluster.w3, cluster.addresses, account=account,
                  state_dir=folder, max_per_request=HEADROOM)
    payer.open(DEPOSIT)
    return Buyer(cluster, payer, folder,
                 chain_snapshot(cluster.w3, cluster.addresses, [account.address,
                                                                cluster.address]))


def body(i: int, *, stream: bool, max_tokens: int | None = None) -> dict[str, Any]:
    return {"model": "tiny", "max_tokens": max_tokens or 3 + i % 4, "temperature": 0,
            "stream": stream, "messages": [{"role": "user", "content": f"Tell me about day {i}."}]}


def ask(http: httpx.Client, i: int, *, stream: bool) -> int:
    """One paid request; the amount of its checked receipt."""
    assert isinstance(http.auth, PayerAuth)
    paid = http.auth.paying(payment := Payment())
    if not stream:
        response = http.post("/v1/chat/completions", json=body(i, stream=False), auth=paid)
        assert response.status_code == 200, response.text
    else:
        with http.stream("POST", "/v1/chat/completions", json=body(i, stream=True),
                         auth=paid) as response:
            assert response.status_code == 200, response.read()
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
    assert payment.receipt is not None
    return int(payment.receipt.amount)


def _ledger_rows(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql.encode(), args).fetchall()


def _wait_claimed(url: str, channel_id: str, timeout: float = 60.0) -> None:
    """Until no replica holds the channel and its whole charge is claimed on chain."""
    deadline = time.monotonic() + timeout
    while True:
        [(charged, claimed, pending)] = _ledger_rows(
            url, "SELECT charged, claimed, pending_request FROM channels WHERE channel_id = %s",
            channel_id)
        if pending is None and claimed == charged:
            return
        assert time.monotonic() < deadline, (
            f"channel {channel_id}: charged {charged}, claimed {claimed}, held by {pending}")
        time.sleep(0.2)


def _claimed_on_chain(cluster: Cluster, channel_id: str) -> int:
    escrow = escrow_contract(cluster.w3, cluster.addresses)
    _, claimed = escrow.functions.channels(bytes.fromhex(channel_id[2:])).call()
    return int(claimed)


# ---------------------------------------------------------------- scenarios


def test_fifty_concurrent_requests_with_one_voucher_serve_one(cluster: Cluster) -> None:
    """One paid request sent 50 times at once, spread over both replicas (the same voucher,
    the same request id): the ledger's channel lock lets exactly one be served; the rest
    get a 402 (busy) or a 409 (already charged) in OpenAI's error shape, and nothing more
    is charged."""
    b = buyer(cluster, "fifty")
    pending = b.payer.pay(HEADROOM)
    hits_before = list(cluster.front.hits)

    def send(_: int) -> httpx.Response:
        return httpx.post(f"{cluster.front.url}/v1/chat/completions",
                          json=body(0, stream=False), timeout=60.0,
                          headers={x402wire.PAYMENT_SIGNATURE: pending.header,
                                   "x-request-id": pending.request_id})

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(send, range(50)))
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(served) == 1, [r.status_code for r in responses]
    # 402 while the winner holds the channel (busy), 409 once it is charged
    assert {r.status_code for r in refused} <= {402, 409}, [r.text for r in refused]
    assert all(set(r.json()["error"]) >= {"message", "type", "code"} for r in refused)
    hits = [after - before for after, before in zip(cluster.front.hits, hits_before,
                                                    strict=True)]
    assert min(hits) >= 20, hits  # both replicas took their share of the race
    [winner] = served
    settle = x402wire.decode_json(winner.headers[x402wire.PAYMENT_RESPONSE],
                                  x402wire.PAYMENT_RESPONSE)
    receipt = b.payer.settle(pending, settle, "tiny", max_tokens=body(0, stream=False)[
        "max_tokens"])
    assert receipt.amount > 0
    with b.client() as http:  # the channel goes on, on either replica
        ask(http, 1, stream=False)
        ask(http, 2, stream=True)
    b.check()


def test_two_hundred_paid_requests_across_both_replicas(cluster: Cluster) -> None:
    """Four buyers, 50 requests each, at once; each buyer's requests alternate between the
    replicas. Every one is served, and what is claimed on chain for each channel is
    exactly what the buyer's receipts add up to."""
    buyers = [buyer(cluster, f"many-{k}") for k in range(4)]
    before = chain_snapshot(cluster.w3, cluster.addresses,
                            [b.payer.config.payer for b in buyers] + [cluster.address])
    hits_before = list(cluster.front.hits)

    def run(b: Buyer) -> list[int]:
        with b.client() as http:
            return [ask(http, i, stream=i % 3 == 0) for i in range(50)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        charged = list(pool.map(run, buyers))
    assert sum(len(c) for c in charged) == 200 and all(a > 0 for c in charged for a in c)
    hits = [after - before for after, before in zip(cluster.front.hits, hits_before,
                                                    strict=True)]
    assert min(hits) >= 90, hits  # round robin: about 100 each (plus 402 round trips)
    receipted = [sum(r.amount for r in b.payer.receipts()) for b in buyers]
    assert [len(b.payer.receipts()) for b in buyers] == [50] * 4
    assert receipted == [sum(amounts) for amounts in charged]
    check_money(cluster, buyers, before)
    assert [_claimed_on_chain(cluster, b.channel_id) for b in buyers] == receipted


def test_node_claim_leaves_the_claiming_to_the_running_replicas(cluster: Cluster) -> None:
    """`agoranet node claim` on the shared ledger while a replica claims: a plain refusal
    (the replicas hold the ledger's claim lock), nothing claimed twice."""
    result = run_subprocess("node", "claim", "--ledger", cluster.ledger, "--keystore",
                            str(cluster.root / "node-key.json"), "--rpc-url",
                            cluster.dev.rpc_url,
                            env={"COLUMNS": "200", "OMP_NUM_THREADS": "1",
                                 PASSWORD_ENV_VAR: PASSWORD}, timeout=120)
    assert_one_line_error(result, "a running replica of this node claims from postgresql://")


def test_sigkill_of_one_replica_loses_nothing(cluster: Cluster) -> None:
    """A replica is SIGKILLed in the middle of a stream it was paid for (the buyer holds a
    running receipt for 8 tokens). The other replica carries on: once the dead one's
    lease runs out its hold is released, charged exactly that running receipt, the buyer
    goes on paying, and everything charged is claimed."""
    b = buyer(cluster, "sigkill")
    with b.client() as http:
        ask(http, 0, stream=False)
        running = 0
        assert isinstance(http.auth, PayerAuth)
        paid = Payment()
        with pytest.raises(httpx.HTTPError), http.stream(
                "POST", "/v1/chat/completions", json=body(1, stream=True, max_tokens=200),
                auth=http.auth.paying(paid)) as response:
            assert response.status_code == 200
            victim = cluster.replicas[int(response.headers["x-front-backend"])]
            for line in response.iter_lines():
                if '"agoranet.receipt.running"' in line:
                    running += 1  # the buyer holds a running receipt for 8 tokens:
                    victim.kill()  # the next is 8 frames (80 ms and more) away
        assert running == 1
        cut = paid.receipt
        assert cut is not None and cut.tokens_out == 8
        [(status,)] = _ledger_rows(cluster.ledger, "SELECT status FROM vouchers WHERE "
                                   "request_id = %s", cut.request_id)
        assert status == "held"  # killed mid-answer: its replica's hold outlives it
        _wait_claimed(cluster.ledger, b.channel_id)  # the survivor released it, and claimed
        [(amount,)] = _ledger_rows(cluster.ledger, "SELECT amount FROM receipts WHERE "
                                   "request_id = %s", cut.request_id)
        assert amount == cut.amount  # charged what the buyer's running receipt says
        for i in range(2, 6):  # the buyer goes on, on the replica that is left
            ask(http, i, stream=i % 2 == 0)
    b.check()
