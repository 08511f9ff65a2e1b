"""The money invariants after each payment scenario, with real processes on the dev chain.

One dev chain for the module; a paid ``agoranet node`` process (the tiny model,
a running receipt every 8 tokens, 10 ms before each streamed frame so a stream
lasts long enough to be cut or killed in the middle), restarted on its ledger
where a scenario kills it; the buyer is the payer (:class:`Payer` behind
:class:`PayerAuth` and httpx), a fresh funded channel per scenario. After each
scenario the node's claim is forced on chain and
:func:`agoranet.testing.invariants.assert_money_invariants` checks, with every
number in its message: claimed <= the buyer's receipts + one request's
headroom; the buyer's recorded spend >= claimed; the stablecoin's supply and
the involved balances unchanged; every voucher the node accepted claimable by
the escrow (and claimed once forced).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from agoranet.chain.addresses import ChainAddresses, resolve_addresses
from agoranet.chain.devchain import DevChain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.errors import PaymentError
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
    check_money_invariants,
    voucher_claim_error,
)
from agoranet.testing.settle import force_settlement
from integration.node_process import NodeProcess

pytestmark = pytest.mark.slow

PASSWORD = "money-invariants-7f1"
PRICE_IN, PRICE_OUT = 1_000_000, 3_000_000  # 1 and 3 base units per token
HEADROOM = 2_000  # the payer's per-request maximum: above any worst case here
DEPOSIT = 1_000_000
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass
class PaidNode:
    process: NodeProcess
    ledger: Path
    key: str
    address: str

    @property
    def url(self) -> str:
        return self.process.url

    def ready(self) -> PaidNode:
        self.process.wait_ready()
        return self


@dataclass
class World:
    dev: DevChain
    w3: Web3
    addresses: ChainAddresses
    root: Path
    tiny: Path

    def node(self, name: str, key_index: int, *extra: str) -> PaidNode:
        key = self.dev.private_keys[key_index]
        account: LocalAccount = Account.from_key(key)
        keystore = self.root / f"{name}-key.json"
        create_keystore(keystore, PASSWORD, private_key=bytes(account.key), scrypt_n=2**10)
        ledger = self.root / f"{name}-ledger.sqlite"
        process = NodeProcess([
            "--model", str(self.tiny), "--price-in", str(PRICE_IN),
            "--price-out", str(PRICE_OUT), "--rpc-url", self.dev.rpc_url,
            "--keystore", str(keystore), "--ledger", str(ledger), "--no-fine-tuning",
            "--no-adapters", "--receipt-every", "8", "--chaos-delay-ms", "10",
            "--chain-state-ttl", "1", *extra], self.root / f"{name}.log",
            module="agoranet.testing", env={PASSWORD_ENV_VAR: PASSWORD})
        process.spawn()  # started, not yet ready: see PaidNode.ready
        return PaidNode(process, ledger, key, account.address)


@pytest.fixture(scope="module")
def world(chain: DevChain, tiny_model: Path,
          tmp_path_factory: pytest.TempPathFactory) -> World:
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    return World(chain, connect(chain.rpc_url), addresses, tmp_path_factory.mktemp("money"),
                 tiny_model)


@pytest.fixture(scope="module")
def nodes(world: World) -> Iterator[tuple[PaidNode, PaidNode]]:
    """The honest node and the cheating one, started together (their start-ups overlap)."""
    started = (world.node("honest", 3), world.node("cheat", 4, "--cheat-payments", "resync"))
    yield started
    for node in started:
        node.process.stop()


@pytest.fixture(scope="module")
def honest(nodes: tuple[PaidNode, PaidNode]) -> PaidNode:
    return nodes[0].ready()


@pytest.fixture(scope="module")
def cheat(nodes: tuple[PaidNode, PaidNode]) -> PaidNode:
    """A node in the resync cheat (:mod:`agoranet.testing.payment_cheats`)."""
    return nodes[1].ready()


@dataclass
class Scenario:
    """A fresh funded buyer with its own channel to ``node``, and the chain before."""

    world: World
    node: PaidNode
    payer: Payer
    folder: Path
    before: ChainSnapshot

    def check(self) -> None:
        """Wait for the node to let go of the channel, force its claim, check the money."""
        _wait_released(self.node.ledger, self.payer)
        outcome = force_settlement(self.world.dev.rpc_url, self.node.ledger, self.node.key)
        print(f"forced settlement: {outcome.reason or 'ok'}, claimed {outcome.claimed}")
        report = assert_money_invariants(
            self.world.w3, self.world.addresses, before=self.before, ledger=self.node.ledger,
            books=[BuyerBook.from_payer_store(self.folder, headroom=HEADROOM)])
        print(report)
        # not vacuous: the node's ledger and the buyer's store both saw this channel paid
        assert all(c.vouchers > 0 and c.receipts > 0 and c.charged > 0
                   for c in report.channels), report
        self.payer.close()


def scenario(world: World, node: PaidNode, name: str) -> Scenario:
    account: LocalAccount = Account.create()
    fund_dev(world.w3, world.addresses, account.address, stablecoin=2 * DEPOSIT, native=10**18)
    folder = world.root / f"payer-{name}"
    payer = Payer(node.url, world.w3, world.addresses, account=account, state_dir=folder,
                  max_per_request=HEADROOM)
    payer.open(DEPOSIT)
    return Scenario(world, node, payer, folder,
                    chain_snapshot(world.w3, world.addresses, [account.address, node.address]))


def _wait_released(ledger: Path, payer: Payer, timeout: float = 20.0) -> None:
    """Until the node's ledger holds no request on the payer's channel (a request the
    buyer hung up on is released when the node notices)."""
    assert payer.state is not None
    deadline = time.monotonic() + timeout
    while True:
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT pending_request FROM channels WHERE channel_id = ?",
                             (payer.state.channel_id,)).fetchone()
        finally:
            db.close()
        if row is None or row[0] is None:
            return
        assert time.monotonic() < deadline, f"the node still holds request {row[0]}"
        time.sleep(0.1)


def body(i: int, *, stream: bool, max_tokens: int | None = None) -> dict[str, Any]:
    return {"model": "tiny", "max_tokens": max_tokens or 3 + i % 4, "temperature": 0,
            "stream": stream, "messages": [{"role": "user", "content": f"Tell me about day {i}."}]}


def ask(http: httpx.Client, i: int, *, stream: bool) -> int:
    """One paid request through the payer; the charged amount from its checked receipt."""
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


def paid_client(s: Scenario) -> httpx.Client:
    return httpx.Client(base_url=s.node.url, auth=PayerAuth(s.payer), timeout=60.0,
                        transport=_EventTransport())


class _EventTransport(httpx.BaseTransport):
    """HTTP, with a response body handed up one SSE event at a time, as a slow network
    would: a client that stops reading after an event has not read the next one, even
    when the socket had it already (the node cannot tell the difference either)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Events(response.stream), extensions=response.extensions)

    def close(self) -> None:
        self.inner.close()


class _Events(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[bytes]:
        buffer = b""
        for data in self.inner:
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                yield event + b"\n\n"
        if buffer:
            yield buffer

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------- scenarios


def test_honest_node(world: World, honest: PaidNode) -> None:
    s = scenario(world, honest, "honest")
    with paid_client(s) as http:
        charged = [ask(http, i, stream=i % 2 == 1) for i in range(6)]
    assert all(c > 0 for c in charged)
    s.check()


def test_sigkill_mid_stream_then_restart(world: World, honest: PaidNode) -> None:
    s = scenario(world, honest, "sigkill")
    with paid_client(s) as http:
        ask(http, 0, stream=False)
        running = 0
        assert isinstance(http.auth, PayerAuth)
        cut = Payment()
        with pytest.raises(httpx.HTTPError), http.stream(
                "POST", "/v1/chat/completions", json=body(1, stream=True, max_tokens=200),
                auth=http.auth.paying(cut)) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if '"agoranet.receipt.running"' in line:
                    running += 1  # the buyer holds a running receipt for 8 tokens:
                    honest.process.kill()  # the next is 8 frames (80 ms and more) away
        assert running == 1
        assert cut.receipt is not None and cut.receipt.tokens_out == 8
        held = _rows(honest.ledger, "SELECT COUNT(*) FROM vouchers WHERE status = 'held'")
        assert held == [(1,)]  # killed mid-answer: the voucher is still held
        honest.process.start()  # recovers on its ledger: charges the last running receipt
        ask(http, 2, stream=True)
    s.check()


def test_resync_cheat(world: World, cheat: PaidNode) -> None:
    """A node that marks each request's full voucher as charged (its receipts say the
    truth) and answers the next voucher with a corrective 402 quoting the buyer's own
    signature: a buyer that believes it pays every request's headroom, unreceipted."""
    s = scenario(world, cheat, "cheat")
    served, refused = 0, ""
    with paid_client(s) as http:
        for i in range(4):
            try:
                ask(http, i, stream=i % 2 == 1)
            except PaymentError as exc:  # the buyer stops paying a node it caught
                refused = f"{type(exc).__name__}: {exc}"
                break
            served += 1
    print(f"served {served} request(s) before the buyer stopped: {refused or '-'}")
    s.check()


def test_malleable_and_noncanonical_signatures(world: World, honest: PaidNode) -> None:
    """Vouchers signed right but written as the high-s twin or with v = 0/1: the escrow
    refuses both, so a node that takes them serves answers it can never claim."""
    s = scenario(world, honest, "malleable")
    with paid_client(s) as http:
        ask(http, 0, stream=False)
    refused = []
    for i, twist in enumerate((_high_s_twin, _v_zero_one), start=1):
        pending = s.payer.pay(HEADROOM)
        payment = x402wire.decode_json(pending.header, x402wire.PAYMENT_SIGNATURE)
        voucher = payment["payload"]["voucher"]
        voucher["signature"] = "0x" + twist(bytes.fromhex(voucher["signature"][2:])).hex()
        response = httpx.post(
            f"{honest.url}/v1/chat/completions", json=body(i, stream=False), timeout=60.0,
            headers={x402wire.PAYMENT_SIGNATURE: x402wire.encode_json(payment),
                     "x-request-id": pending.request_id})
        if response.status_code == 200:  # served: the buyer keeps the node's receipt
            settle = x402wire.decode_json(response.headers[x402wire.PAYMENT_RESPONSE],
                                          x402wire.PAYMENT_RESPONSE)
            s.payer.settle(pending, settle, "tiny", max_tokens=body(i, stream=False)["max_tokens"])
        else:
            assert response.status_code in (400, 402), response.text
            error = response.json()["error"]
            assert "signature" in f"{error['message']} {error.get('code')}".lower(), error
            refused.append(f"{twist.__name__}: {error['message']}")
    print(f"refused: {refused}")
    s.check()


def test_stream_cut_after_its_last_token(world: World, honest: PaidNode) -> None:
    """The buyer reads every content token, then hangs up before the final receipt frame:
    it holds the last running receipt, and the node may charge no more than that."""
    s = scenario(world, honest, "cut")
    with paid_client(s) as http:
        ask(http, 0, stream=False)
        assert isinstance(http.auth, PayerAuth)
        cut = Payment()
        with http.stream("POST", "/v1/chat/completions",
                         json=body(1, stream=True, max_tokens=10),
                         auth=http.auth.paying(cut)) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                frame = json.loads(line.removeprefix("data: "))
                if any(c.get("finish_reason") for c in frame.get("choices", [])):
                    break  # the last token has arrived; the receipt frame comes next
        # the buyer holds the running receipt for 8 of its 10 tokens: that is its charge
        assert cut.receipt is not None and cut.receipt.tokens_out == 8
        ask(http, 2, stream=False)  # the channel goes on
    s.check()


def test_fifty_concurrent_requests_on_one_channel(world: World, honest: PaidNode) -> None:
    s = scenario(world, honest, "fifty")
    with paid_client(s) as http, ThreadPoolExecutor(max_workers=50) as pool:
        charged = list(pool.map(lambda i: ask(http, i, stream=i % 2 == 1), range(50)))
    assert len(charged) == 50 and all(c > 0 for c in charged)
    assert len(s.payer.receipts()) == 50
    s.check()


def test_the_checker_sees_each_broken_invariant(world: World, honest: PaidNode) -> None:
    """The checker is not vacuous: the same paid channel, with the buyer's books cut, a
    receipt altered, money minted, or a voucher's signature written as its high-s twin,
    is reported."""
    s = scenario(world, honest, "checker")
    with paid_client(s) as http:
        ask(http, 0, stream=False)
    s.check()
    book = BuyerBook.from_payer_store(s.folder, headroom=HEADROOM)
    fund_dev(world.w3, world.addresses, s.payer.config.payer, stablecoin=1, native=0)
    report = check_money_invariants(
        world.w3, world.addresses, before=s.before, ledger=honest.ledger,
        books=[replace(book, receipts=(), spent=0, headroom=0)])
    broken = " ".join(report.violations)
    for invariant in ("claimed <= receipts + headroom", "recorded spend >= claimed",
                      "supply and balances conserved"):
        assert f"[{invariant}]" in broken, report
    inflated = tuple(replace(r, amount=r.amount + 1) for r in book.receipts)  # not signed
    report = check_money_invariants(world.w3, world.addresses, before=s.before,
                                    ledger=honest.ledger, books=[replace(book, receipts=inflated)])
    assert report.channels[0].receipts == 0 and "is signed by" in " ".join(report.violations)
    channel = _rows(honest.ledger, "SELECT config, voucher_amount, voucher_signature FROM "
                    "channels WHERE channel_id = ?", book.channel_id)[0]
    config = ChannelConfig.from_dict(json.loads(channel[0]))
    escrow = escrow_contract(world.w3, world.addresses)
    signature = bytes.fromhex(str(channel[2])[2:])
    assert voucher_claim_error(world.w3, escrow, config, channel[1], "0x" + signature.hex()) \
        is None  # claimable even though the chain has claimed it already
    twin = "0x" + _high_s_twin(signature).hex()
    assert "InvalidSignature" in str(voucher_claim_error(world.w3, escrow, config, channel[1],
                                                         twin))


# ---------------------------------------------------------------- helpers


def _high_s_twin(signature: bytes) -> bytes:
    """The same signer's other valid ECDSA signature: ``n - s`` and the other ``v``."""
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])


def _v_zero_one(signature: bytes) -> bytes:
    """The same signature with ``v`` written 0/1 instead of 27/28."""
    return signature[:64] + bytes([signature[64] - 27])


def _rows(ledger: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()
