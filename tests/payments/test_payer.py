"""The payer library and its httpx auth against a served in-process node on the dev chain.

Covers what only a real connection shows: receipts checked from the header and
from a stream's final event, a lost answer resynced from the node's corrective
402 (only because the node's receipt in it backs it), top-ups, and concurrent
requests on one channel going one at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.errors import ReceiptError
from agoranet.node.app import create_app
from agoranet.node.payment_setup import NodePayments
from agoranet.payments import x402wire
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer
from agoranet.payments.receipts import Receipt

from .conftest import Env
from .hangup_gate import HANG_UP_AFTER, HangUpGate
from .paid_support import ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = needs_anvil

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6}


@dataclass
class Served:
    url: str
    payments: NodePayments


@pytest.fixture
async def node(env: Env, tmp_path: Path) -> AsyncIterator[Served]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[7])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account)
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger), None, payments)
    async with served(app) as url:
        yield Served(url, payments)


def make_payer(env: Env, node: Served, payer: LocalAccount, tmp: Path, **kw: int) -> Payer:
    return Payer(node.url, env.w3, env.addresses, account=payer, state_dir=tmp / "payer",
                 max_per_request=20_000, **kw)


def post(http: httpx.Client, stream: bool = False) -> Receipt:
    """One request paid through the client's :class:`PayerAuth`; its verified receipt."""
    assert isinstance(http.auth, PayerAuth)
    paid = http.auth.paying(payment := Payment())
    if not stream:
        response = http.post("/v1/chat/completions", json=BODY, auth=paid)
        assert response.status_code == 200, response.text
    else:
        with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True},
                         auth=paid) as response:
            assert response.status_code == 200
            response.read()
    assert payment.receipt is not None
    return payment.receipt


async def test_receipts_resync_and_top_up(env: Env, node: Served, payer: LocalAccount,
                                          tmp_path: Path) -> None:
    def run() -> None:
        p = make_payer(env, node, payer, tmp_path, top_up=60_000)
        p.open(60_000)  # room for two vouchers of 20,000 headroom each, then top-ups
        with httpx.Client(base_url=node.url, auth=PayerAuth(p), timeout=30) as http:
            first, second = post(http), post(http, stream=True)
            assert second.cumulative == first.amount + second.amount
            assert p.state is not None
            # an answer lost on the way (the payer crashed after the node charged it): the
            # payer signed the voucher, the node served it, the payer never saw the receipt
            lost = p.pay(20_000)
            served = httpx.post(f"{node.url}/v1/chat/completions", json=BODY, timeout=30,
                                headers={x402wire.PAYMENT_SIGNATURE: lost.header,
                                         "x-request-id": lost.request_id})
            assert served.status_code == 200 and p.state.charged == second.cumulative
            # the next voucher is stale: the corrective 402 carries the node's receipt of
            # the lost request, which backs its higher total -> resync -> paid
            third = post(http)
            missed = p.receipts()[2]
            assert missed.request_id == lost.request_id
            assert third.cumulative == missed.cumulative + third.amount
            assert p.state.charged == third.cumulative == p.state.spent
            for _ in range(6):  # deposits run out: the payer tops up on chain
                post(http)
            assert p.state.deposited > 60_000
        record = node.payments.ledger.channel(p.state.channel_id)
        assert record is not None and record.charged == p.state.charged
        assert sum(r.amount for r in p.receipts()) == p.state.spent == p.state.charged
        assert p.state.disputed == 0
        p.close()

    await asyncio.to_thread(run)


async def test_concurrent_requests_share_one_channel(env: Env, node: Served,
                                                     payer: LocalAccount,
                                                     tmp_path: Path) -> None:
    """Eight threads on one payer: the auth serialises them; every charge is receipted."""
    def run() -> None:
        p = make_payer(env, node, payer, tmp_path)
        p.open(1_000_000)
        auth = PayerAuth(p)
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                with httpx.Client(base_url=node.url, auth=auth, timeout=30) as http:
                    for _ in range(3):
                        post(http, stream=i % 2 == 0)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        receipts = p.receipts()
        assert len(receipts) == 24 and p.state is not None
        assert sum(r.amount for r in receipts) == p.state.charged
        record = node.payments.ledger.channel(p.state.channel_id)
        assert record is not None and record.charged == p.state.charged
        p.close()

    await asyncio.to_thread(run)


async def test_a_dishonest_receipt_is_refused(env: Env, node: Served, payer: LocalAccount,
                                              tmp_path: Path) -> None:
    def run() -> None:
        p = make_payer(env, node, payer, tmp_path)
        p.open(100_000)
        real = p.prices("fake")
        # the payer believes the node charges one base unit less per output token
        p.offer.models[0].price.output_per_million = real.output_per_million - 1_000_000
        with httpx.Client(base_url=node.url, auth=PayerAuth(p), timeout=30) as http, \
                pytest.raises(ReceiptError):
            post(http)
        p.close()

    await asyncio.to_thread(run)


async def test_a_broken_stream_costs_its_last_running_receipt(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """Node and payer agree on what a stream cut short cost, both by a signed receipt."""
    from .paid_support import CountingEngine

    account: LocalAccount = Account.from_key(env.dev.private_keys[8])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account, receipt_every=4)
    app = create_app(CountingEngine(delay=0.01, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger, receipt_every=4), None, payments)
    body = {**BODY, "max_tokens": 40, "stream": True}

    async with served(app) as url:
        def run() -> tuple[Payer, Receipt, Receipt]:
            p = Payer(url, env.w3, env.addresses, account=payer, state_dir=tmp_path / "payer",
                      max_per_request=200_000)
            p.open(1_000_000)
            auth, whole_paid, cut_paid = PayerAuth(p), Payment(), Payment()
            with httpx.Client(base_url=url, auth=auth, timeout=30) as http:
                with http.stream("POST", "/v1/chat/completions", json=body,
                                 auth=auth.paying(whole_paid)) as whole:
                    frames = [line for line in whole.iter_lines() if line]
                running = sum('"agoranet.receipt.running"' in f for f in frames)
                assert running == 10  # every 4 of 40 tokens, then the final receipt
                final = whole_paid.receipt
                assert final is not None and final.tokens_out == 40
                with http.stream("POST", "/v1/chat/completions", json=body,
                                 auth=auth.paying(cut_paid)) as cut:
                    words = 0
                    for line in cut.iter_lines():
                        words += '"content":"w' in line
                        if words == 10:
                            break  # the buyer hangs up after 10 tokens
                broken = cut_paid.receipt
                assert broken is not None
            return p, final, broken

        p, final, broken = await asyncio.to_thread(run)
        assert broken.tokens_out == 8  # the last running receipt before the 10th token
        assert p.state is not None and p.state.charged == final.amount + broken.amount
        assert p.receipts() == [final, broken]
        for _ in range(100):  # the node notices the hang-up when it next writes
            record = payments.ledger.channel(broken.channel_id)
            if record is not None and record.pending_request is None:
                break
            await asyncio.sleep(0.05)
        assert record is not None and record.charged == p.state.charged
        assert payments.ledger.receipts(broken.channel_id) == [final, broken]
        p.close()


def test_the_store_keeps_state_and_receipts_together_and_imports_old_files(
        tmp_path: Path) -> None:
    import json

    from agoranet.payments.pay.payer import ChannelState
    from agoranet.payments.pay.payer_store import PayerStore
    from agoranet.payments.receipts import ReceiptSigner

    signer = ReceiptSigner(bytes(Account.create().key))
    cid = "0x" + "ab" * 32
    old = tmp_path / "old"
    old.mkdir()
    first = signer.sign(Receipt("r1", cid, 3, 4, 10, 10, 31337))
    (old / "channel.json").write_text(json.dumps(
        {"channel_id": cid, "config": {}, "deposited": 500, "charged": 10, "voucher": 30,
         "receipts": 1, "spent": 10}))
    (old / "receipts.jsonl").write_text(json.dumps(first.to_json()) + "\n")
    store = PayerStore(old)
    assert store.load() == {"channel_id": cid, "config": {}, "deposited": 500, "charged": 10,
                            "voucher": 30, "receipts": 1, "spent": 10, "disputed": 0,
                            "dispute": "", "payments": {}, "unreceipted": {}}
    assert store.receipts() == [first]
    second = signer.sign(Receipt("r2", cid, 3, 4, 10, 20, 31337))
    store.save(ChannelState(cid, {}, 500, 20, 40, 2, 20), second)
    again = PayerStore(old)  # a second connection, as after the gateway is killed
    assert again.receipts() == [first, second]
    assert again.load()["charged"] == 20  # type: ignore[index]
    store.close()
    again.close()


async def test_commitments_are_priced_by_the_offer_and_receipted(
        env: Env, payer: LocalAccount, tmp_path: Path, tiny_engine: object) -> None:
    """A request that asks for commitments pays the offer's surcharge on every token, in its
    running receipts and its final one; the payer checks that price."""
    from agoranet.market import TokenPrices, cost

    surcharge = 500_000_000
    account: LocalAccount = Account.from_key(env.dev.private_keys[9])
    ledger = tmp_path / "ledger.sqlite"
    settings = paid_settings(env.dev.rpc_url, ledger, receipt_every=4,
                             price_commitments=surcharge, served_model_name="tiny")
    app = create_app(tiny_engine, settings, None,  # type: ignore[arg-type]
                     node_payments(env.dev.rpc_url, ledger, account, receipt_every=4))
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}],
           "max_tokens": 12, "temperature": 0, "ignore_eos": True}

    async with served(app) as url:
        def run() -> tuple[Payer, list[Receipt]]:
            p = Payer(url, env.w3, env.addresses, account=payer, state_dir=tmp_path / "p",
                      max_per_request=200_000)
            p.open(1_000_000)
            auth, payments = PayerAuth(p), [Payment(), Payment(), Payment()]
            with httpx.Client(base_url=url, auth=auth, timeout=60) as http:
                http.post("/v1/chat/completions", json=ask, auth=auth.paying(payments[0]))
                proved = http.post("/v1/chat/completions",
                                   json={**ask, "agoranet": {"commitments": True}},
                                   auth=auth.paying(payments[1]))
                assert proved.json()["agoranet"]["commitments"]["proofs"]
                with http.stream("POST", "/v1/chat/completions",
                                 json={**ask, "stream": True,
                                       "agoranet": {"commitments": True}},
                                 auth=auth.paying(payments[2])) as streamed:
                    streamed.read()
            found = [payment.receipt for payment in payments]
            return p, found

        p, (plain, proved, streamed) = await asyncio.to_thread(run)
    base = p.prices("tiny")
    assert p.offer.models[0].commitments.price_per_million == surcharge
    assert plain.amount == cost(base, plain.tokens_in, plain.tokens_out)
    dearer = TokenPrices(base.input_per_million + surcharge, base.output_per_million + surcharge)
    for receipt in (proved, streamed):
        assert receipt.tokens_out == 12
        assert receipt.amount == cost(dearer, receipt.tokens_in, receipt.tokens_out) > plain.amount
    p.close()


async def test_concurrent_streams_cut_short_on_one_channel_stay_in_step(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """Eight threads stream on one channel and half of them hang up mid-answer: each request
    ends charged by one receipt, and the node and the payer agree on every one. (The node
    is held after the hang-up's tenth word until it sees the hang-up: else, on a loaded
    machine, it may record its 12-token running receipt first, which the payer learns
    only from the next request's corrective 402 -- test_payer_cut_streams.py.)"""
    from starlette.middleware import Middleware

    from .paid_support import CountingEngine

    account: LocalAccount = Account.from_key(env.dev.private_keys[6])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account, receipt_every=4)
    app = create_app(CountingEngine(delay=0.005, max_active=8, max_queue=64),
                     paid_settings(env.dev.rpc_url, ledger, receipt_every=4), None, payments,
                     middleware=[Middleware(HangUpGate)])
    body = {**BODY, "max_tokens": 20, "stream": True}

    async with served(app) as url:
        def run() -> Payer:
            p = Payer(url, env.w3, env.addresses, account=payer, state_dir=tmp_path / "p",
                      max_per_request=200_000)
            p.open(5_000_000)
            auth = PayerAuth(p)
            errors: list[BaseException] = []

            def worker(i: int) -> None:
                try:
                    with httpx.Client(base_url=url, auth=auth, timeout=30) as http:
                        hang_up = {HANG_UP_AFTER: "10"} if i % 2 else {}
                        for _ in range(3):
                            with http.stream("POST", "/v1/chat/completions", json=body,
                                             headers=hang_up) as r:
                                assert r.status_code == 200  # a busy channel is waited out
                                words = 0
                                for line in r.iter_lines():
                                    words += '"content":"w' in line
                                    if i % 2 and words == 10:
                                        break  # hang up: charged the 8-token running receipt
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            return p

        p = await asyncio.to_thread(run)
        assert p.state is not None
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # the node lets the channel go once it has seen the last hang-up
            record = payments.ledger.channel(p.state.channel_id)
            if record is not None and record.pending_request is None:
                break
            assert asyncio.get_running_loop().time() < deadline, "the channel stayed busy"
            await asyncio.sleep(0.05)
        on_node = payments.ledger.receipts(p.state.channel_id)  # before the node stops
    receipts = p.receipts()
    assert sorted(r.tokens_out for r in receipts) == [8] * 12 + [20] * 12
    assert sum(r.amount for r in receipts) == p.state.charged
    assert record is not None and record.charged == p.state.charged
    assert sorted(on_node, key=lambda r: r.cumulative) == \
        sorted(receipts, key=lambda r: r.cumulative)
    p.close()
