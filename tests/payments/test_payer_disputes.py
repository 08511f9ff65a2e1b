"""A node's charged total is believed only as far as a receipt the payer holds backs it.

Served in-process nodes on the dev chain, real HTTP: a node that inflates its
charged total (the ``resync`` payment cheat) is disputed, not believed; a stream
cut as its final receipt goes out is charged its last running receipt; an answer
or a final receipt the payer never saw is resynced from the node's receipt in its
corrective 402; a busy channel is waited out (by behaviour, not timing). Each
scenario ends with the money invariants (:mod:`.money`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from x402.mechanisms.evm.batch_settlement.errors import ERR_CHANNEL_BUSY

from agoranet.engines.base import Delta, Finish, Prepared, StreamEvent
from agoranet.errors import PaymentError
from agoranet.node.app import create_app
from agoranet.node.payment_setup import build_payments
from agoranet.payments import x402wire
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer
from agoranet.payments.receipts import Receipt
from agoranet.testing.chaos import ConnectionCut

from .conftest import Env
from .money import assert_money_invariants
from .paid_support import CountingEngine, ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = needs_anvil

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6}
HEADROOM = 20_000  # each request's maximum (its worst case is 3*1000 + 6*2000 = 15,000)
STREAM_HEADROOM = 30_000  # for 10 tokens: worst case 3*1000 + 10*2000 = 23,000


def _payer(env: Env, url: str, account: LocalAccount, folder: Path, deposit: int,
           headroom: int = HEADROOM) -> Payer:
    p = Payer(url, env.w3, env.addresses, account=account, state_dir=folder,
              max_per_request=headroom)
    p.open(deposit)
    return p


async def _settled(payments: Any, channel_id: str) -> None:
    """Wait until the node has let go of the channel, then make it claim on chain."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        record = payments.ledger.channel(channel_id)
        if record is not None and record.pending_request is None:
            break
        assert asyncio.get_running_loop().time() < deadline, "the channel stayed busy"
        await asyncio.sleep(0.05)
    await asyncio.to_thread(payments.settler.tick, force=True)


async def test_a_node_inflating_its_charged_total_is_disputed_not_believed(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """#12: the node marks each request's whole voucher as charged and answers the next
    voucher with a corrective 402; the payer counts what it can claim, pays it no more."""
    from agoranet.testing.payment_cheats import ResyncCheatLedger

    account: LocalAccount = Account.from_key(env.dev.private_keys[5])
    path = tmp_path / "cheat.sqlite"
    settings = paid_settings(env.dev.rpc_url, path)
    payments = build_payments(settings, account, ledger=ResyncCheatLedger(path))
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16), settings, None, payments)
    async with served(app) as url:
        def run() -> tuple[Payer, list[Any], list[PaymentError]]:
            p = _payer(env, url, payer, tmp_path / "payer", 500_000)
            seen: list[Any] = []
            p.on_dispute = seen.append
            refused: list[PaymentError] = []
            with httpx.Client(base_url=url, auth=PayerAuth(p), timeout=30) as http:
                for _ in range(6):
                    try:
                        answer = http.post("/v1/chat/completions", json=BODY)
                        assert answer.status_code == 200, answer.text
                    except PaymentError as exc:
                        refused.append(exc)
            return p, seen, refused

        p, seen, refused = await asyncio.to_thread(run)
        assert p.state is not None
        await _settled(payments, p.state.channel_id)
    claimed, held = assert_money_invariants(p, HEADROOM)
    from agoranet.errors import ChargeDisputeError

    assert held == 9_000 and claimed == HEADROOM  # one answer receipted; its voucher claimed
    assert len(refused) == 5 and all(isinstance(e, ChargeDisputeError) for e in refused)
    assert "no receipt backs" in str(refused[0]) and "pays" in str(refused[-1])
    # the exposure: the second request's voucher (9,000 + 20,000) less the receipts
    assert [(d.claimed, d.receipted, d.exposure) for d in seen] == [(HEADROOM, 9_000, HEADROOM)]
    assert p.state.disputed == HEADROOM and p.state.spent == held + HEADROOM
    assert p.state.charged == held and p.state.voucher == held + HEADROOM
    p.close()
    again = Payer(url, env.w3, env.addresses, account=payer, state_dir=tmp_path / "payer",
                  http=httpx.Client(transport=_OfferOnly(p.offer.model_dump_json())))
    with pytest.raises(ChargeDisputeError):  # the dispute outlives a restart
        again.pay(HEADROOM)
    again.close()


class _OfferOnly(httpx.BaseTransport):
    """Answers the offer request (the node is gone) so a payer can be built again."""

    def __init__(self, offer: str) -> None:
        self.offer = offer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=self.offer.encode())


def test_a_corrective_402_without_a_backing_receipt_is_a_dispute(tmp_path: Path) -> None:
    """#21: a node's ``chargedCumulativeAmount`` up to its own ``totalClaimed``, or with a
    receipt for a request the payer never paid, raises nothing the payer owes."""
    from agoranet.payments.pay.payer import ChannelState
    from agoranet.payments.pay.payer_store import PayerStore
    from agoranet.payments.receipts import ReceiptSigner

    node = ReceiptSigner(bytes(Account.create().key))
    p = object.__new__(Payer)  # the payer's resync logic alone, without a node or chain
    cid = "0x" + "cd" * 32
    p.root, p.node, p.chain_id, p._store = "http://n", node.address, 31337, PayerStore(tmp_path)
    p.on_dispute = p.on_resync = None
    p.state = ChannelState(cid, {}, deposited=1_000_000, charged=13_000, voucher=33_000)
    stranger = node.sign(Receipt("r9", cid, 3, 3, 9_000, 90_000, 31337))
    claim = {"channelState": {"channelId": cid, "chargedCumulativeAmount": "90000",
                              "totalClaimed": "90000"}, "receipt": stranger.to_json()}
    with pytest.raises(PaymentError, match="no receipt"):
        p.resync(claim)
    from agoranet.errors import ChargeDisputeError

    with pytest.raises(ChargeDisputeError):  # and it pays that node no more
        p.pay(1_000)
    assert p.state.charged == 13_000 and p.receipts() == []
    assert p.state.disputed == p.state.spent == 20_000  # it signed 33,000 at most
    p.state.dispute = ""
    lower = {"channelState": {"channelId": cid, "chargedCumulativeAmount": "12000"}}
    assert p.resync(lower) and p.state.charged == 12_000  # believing less costs nothing
    p._store.close()


class CutBeforeFinalReceipt:
    """Drops the connection as a stream's final receipt frame goes out: the buyer has every
    token and its running receipts, not the final receipt."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def cutting(message: Message) -> None:
            if message["type"] == "http.response.body" and \
                    b'"agoranet.receipt"' in message.get("body", b""):
                raise ConnectionCut("cut as the final receipt went out")
            await send(message)

        await self.app(scope, receive, cutting if scope["type"] == "http" else send)


async def test_a_stream_cut_before_its_final_receipt_costs_its_last_running_receipt(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """#12 defect 6: the node's charge for an answer equals a receipt it sent."""
    account: LocalAccount = Account.from_key(env.dev.private_keys[8])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account, receipt_every=4)
    app = create_app(CountingEngine(max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger, receipt_every=4), None, payments)
    body = {**BODY, "max_tokens": 10, "stream": True}
    async with served(CutBeforeFinalReceipt(app)) as url:  # type: ignore[arg-type]
        running: list[dict[str, Any]] = []

        def run() -> tuple[Payer, int, Receipt]:
            p = _payer(env, url, payer, tmp_path / "payer", 1_000_000, STREAM_HEADROOM)
            words, payment = 0, Payment()
            with httpx.Client(base_url=url, auth=PayerAuth(p).paying(payment), timeout=30) as http:
                try:
                    with http.stream("POST", "/v1/chat/completions", json=body) as cut:
                        for line in cut.iter_lines():
                            words += '"content":"w' in line
                            if '"agoranet.receipt.running"' in line:
                                running.append(json.loads(line.removeprefix("data: ")))
                except httpx.HTTPError:
                    pass  # the connection was dropped
            assert payment.receipt is not None
            return p, words, payment.receipt

        p, words, held = await asyncio.to_thread(run)
        # each running receipt goes out as an x402 payment response, marked running
        assert [event["x402_payment_response"] for event in running] == [
            {"success": True, "payer": payer.address, "network": env.dev.network,
             "extra": {"chargedAmount": str(r.amount), "running": True, "receipt": r.to_json()}}
            for r in (Receipt.from_json(e["x402_payment_response"]["extra"]["receipt"])
                      for e in running)]
        assert len(running) == 2 and running[-1]["x402_payment_response"]["extra"][
            "receipt"] == held.to_json()
        assert p.state is not None
        await _settled(payments, p.state.channel_id)
        record = payments.ledger.channel(p.state.channel_id)
        on_node = payments.ledger.receipts(p.state.channel_id)
    assert words == 10 and held.tokens_out == 8  # every token arrived; receipted up to 8
    assert record is not None and record.charged == held.cumulative == p.state.charged
    assert on_node == [held]
    assert_money_invariants(p, STREAM_HEADROOM)
    p.close()


async def test_a_final_receipt_the_buyer_did_not_read_comes_back_in_the_corrective_402(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """The buyer hangs up after the last token: whether or not the node had sent (and so
    charged) the final receipt, buyer and node agree on the next request, no dispute."""
    account: LocalAccount = Account.from_key(env.dev.private_keys[9])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account, receipt_every=4)
    app = create_app(CountingEngine(max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger, receipt_every=4), None, payments)
    body = {**BODY, "max_tokens": 10, "stream": True}
    async with served(app) as url:
        def run() -> Payer:
            p = _payer(env, url, payer, tmp_path / "payer", 1_000_000, STREAM_HEADROOM)
            auth = PayerAuth(p)
            with httpx.Client(base_url=url, auth=auth, timeout=30) as http:
                for _ in range(3):
                    payment = Payment()
                    with http.stream("POST", "/v1/chat/completions", json=body,
                                     auth=auth.paying(payment)) as cut:
                        words = 0
                        for line in cut.iter_lines():
                            words += '"content":"w' in line
                            if words == 10:
                                break  # hang up after the last token
                    assert payment.receipt is not None
                    assert payment.receipt.tokens_out in (8, 10)
                after = http.post("/v1/chat/completions", json=BODY)
                assert after.status_code == 200, after.text
            return p

        p = await asyncio.to_thread(run)
        assert p.state is not None
        await _settled(payments, p.state.channel_id)
        record = payments.ledger.channel(p.state.channel_id)
    assert_money_invariants(p, STREAM_HEADROOM)
    assert record is not None and record.charged == p.state.charged
    assert p.state.disputed == 0
    p.close()


class GatedEngine(CountingEngine):
    """Holds every answer before its first token until ``gate`` is set."""

    def __init__(self, gate: threading.Event, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate = gate

    def stream(self, prepared: Prepared) -> Any:
        self.calls += 1
        return self.scheduler.run(_GatedJob(prepared, self.gate))


class _GatedJob:
    def __init__(self, prepared: Prepared, gate: threading.Event) -> None:
        self.prepared, self.gate, self.sent = prepared, gate, 0

    def step(self) -> list[StreamEvent]:
        if self.sent == 0:
            self.gate.wait(30)
        self.sent += 1
        events: list[StreamEvent] = [Delta(f"w{self.sent} ")]
        if self.sent >= 3:
            events.append(Finish("stop", self.prepared.prompt_tokens, self.sent))
        return events


def _is_busy(response: httpx.Response) -> bool:
    header = response.headers.get(x402wire.PAYMENT_REQUIRED)
    return response.status_code == 402 and bool(header) and \
        x402wire.decode_payment_required(header).error == ERR_CHANNEL_BUSY


async def test_a_busy_channel_is_waited_out(env: Env, payer: LocalAccount,
                                            tmp_path: Path) -> None:
    """#21: while the node holds the channel for an earlier request, the next one is refused
    as busy; the payer pays it again once the channel is free, instead of failing."""
    account: LocalAccount = Account.from_key(env.dev.private_keys[6])
    ledger = tmp_path / "ledger.sqlite"
    gate = threading.Event()
    payments = node_payments(env.dev.rpc_url, ledger, account)
    app = create_app(GatedEngine(gate, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger), None, payments)
    async with served(app) as url:
        def run() -> tuple[Payer, list[int], list[httpx.Response]]:
            p = _payer(env, url, payer, tmp_path / "payer", 1_000_000)
            assert p.state is not None
            held = p.pay(HEADROOM)  # the earlier request, paid by hand and held by the gate
            answers: list[httpx.Response] = []
            earlier = threading.Thread(target=lambda: answers.append(httpx.post(
                f"{url}/v1/chat/completions", json=BODY, timeout=30,
                headers={x402wire.PAYMENT_SIGNATURE: held.header,
                         "x-request-id": held.request_id})))
            earlier.start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                record = payments.ledger.channel(p.state.channel_id)
                if record is not None and record.pending_request == held.request_id:
                    break
                time.sleep(0.01)
            statuses: list[int] = []
            busy = threading.Event()

            def seen(response: httpx.Response) -> None:
                statuses.append(response.status_code)
                if _is_busy(response):
                    busy.set()

            with httpx.Client(base_url=url, auth=PayerAuth(p), timeout=30,
                              event_hooks={"response": [seen]}) as http:
                later = threading.Thread(target=lambda: answers.append(
                    http.post("/v1/chat/completions", json=BODY)))
                later.start()
                assert busy.wait(20), "the node never refused the second request as busy"
                gate.set()  # the earlier request finishes: the channel is free
                later.join(30)
            earlier.join(30)
            return p, statuses, answers

        p, statuses, answers = await asyncio.to_thread(run)
        assert p.state is not None
        await _settled(payments, p.state.channel_id)
        record = payments.ledger.channel(p.state.channel_id)
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert statuses[0] == 402 and statuses[-1] == 200
    assert record is not None and record.charged == p.state.charged
    assert len(p.receipts()) == 2  # the later one's, and the earlier one's (corrective 402)
    assert_money_invariants(p, HEADROOM)
    p.close()


async def test_a_refused_receipt_shown_again_in_a_corrective_402_is_a_dispute(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """A node whose receipt the payer refused (it overprices the tokens) charges it anyway
    and shows it in its corrective 402: the payer does not believe it the second time."""
    import dataclasses

    from .lying import LyingSigner

    account: LocalAccount = Account.from_key(env.dev.private_keys[4])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account)
    payments.acceptor.signer = LyingSigner(  # type: ignore[assignment]
        payments.acceptor.signer, lambda r, n: dataclasses.replace(r, tokens_out=r.tokens_out - 1))
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger), None, payments)
    async with served(app) as url:
        def run() -> tuple[Payer, list[str]]:
            p = _payer(env, url, payer, tmp_path / "payer", 500_000)
            errors = []
            with httpx.Client(base_url=url, auth=PayerAuth(p), timeout=30) as http:
                for _ in range(2):
                    try:
                        http.post("/v1/chat/completions", json=BODY)
                    except PaymentError as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
            return p, errors

        p, errors = await asyncio.to_thread(run)
        assert p.state is not None
        await _settled(payments, p.state.channel_id)
    assert len(errors) == 2 and errors[0].startswith("ReceiptError")
    assert errors[1].startswith("ChargeDisputeError")
    assert p.receipts() == [] and p.state.charged == 0
    assert p.state.disputed == p.state.spent == HEADROOM  # the refused request's voucher
    claimed, _ = assert_money_invariants(p, HEADROOM)
    assert claimed == 9_000  # the node claimed its charge: counted, as disputed spend
    p.close()


class ForgeFirstReceipt:
    """Passes a node's answers through, but the first one's receipt arrives signed by a
    stranger (forged, or damaged on the way); the node keeps its own, validly signed."""

    def __init__(self, app: ASGIApp) -> None:
        from agoranet.payments.receipts import ReceiptSigner

        self.app = app
        self.stranger = ReceiptSigner(bytes(Account.create().key))
        self.forged = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def forging(message: Message) -> None:
            if message["type"] == "http.response.start" and not self.forged:
                headers = []
                for name, value in message["headers"]:
                    if name == x402wire.PAYMENT_RESPONSE.lower().encode():
                        data = x402wire.decode_json(value.decode(), "payment response")
                        receipt = Receipt.from_json(data["extra"]["receipt"])
                        data["extra"]["receipt"] = self.stranger.sign(receipt).to_json()
                        value = x402wire.encode_json(data).encode()
                        self.forged += 1
                    headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, forging if scope["type"] == "http" else send)


async def test_a_receipt_refused_for_its_signature_is_not_believed_from_a_corrective_402(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """A receipt not signed by the node is refused; the node's own receipt of that request,
    shown later in its corrective 402, is not believed either: a dispute, the request's
    voucher counted as spend."""
    from agoranet.errors import ChargeDisputeError, ReceiptError

    account: LocalAccount = Account.from_key(env.dev.private_keys[3])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account)
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger), None, payments)
    forger = ForgeFirstReceipt(app)
    async with served(forger) as url:  # type: ignore[arg-type]
        def run() -> tuple[Payer, list[PaymentError]]:
            p = _payer(env, url, payer, tmp_path / "payer", 500_000)
            errors: list[PaymentError] = []
            with httpx.Client(base_url=url, auth=PayerAuth(p), timeout=30) as http:
                for _ in range(2):
                    try:
                        http.post("/v1/chat/completions", json=BODY)
                    except PaymentError as exc:
                        errors.append(exc)
            return p, errors

        p, errors = await asyncio.to_thread(run)
        assert p.state is not None
        await _settled(payments, p.state.channel_id)
    assert forger.forged == 1 and len(errors) == 2
    assert isinstance(errors[0], ReceiptError) and "is signed by" in str(errors[0])
    assert isinstance(errors[1], ChargeDisputeError)
    assert p.receipts() == [] and p.state.charged == 0
    assert p.state.disputed == p.state.spent == HEADROOM  # the refused request's voucher
    claimed, _ = assert_money_invariants(p, HEADROOM)
    assert claimed == 9_000  # the node claimed its charge: counted, as disputed spend
    p.close()
