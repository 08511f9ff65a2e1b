"""The payer library and its httpx auth against a served in-process node on the dev chain.

Covers what only a real connection shows: receipts checked from the header and
from a stream's final event, a lost receipt resynced from the node's corrective
402 (only when the node proves it with the payer's own signature), top-ups, and
concurrent requests on one channel going one at a time.
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
from agoranet.payments.httpx_auth import PayerAuth
from agoranet.payments.payer import Payer
from agoranet.payments.receipts import Receipt

from .conftest import Env
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
    if not stream:
        response = http.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 200, response.text
    else:
        with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
            assert response.status_code == 200
            response.read()
    receipt: Receipt = response.extensions["agoranet_receipt"]
    return receipt


async def test_receipts_resync_and_top_up(env: Env, node: Served, payer: LocalAccount,
                                          tmp_path: Path) -> None:
    def run() -> None:
        p = make_payer(env, node, payer, tmp_path, top_up=60_000)
        p.open(60_000)  # room for two vouchers of 20,000 headroom each, then top-ups
        with httpx.Client(base_url=node.url, auth=PayerAuth(p), timeout=30) as http:
            first, second = post(http), post(http, stream=True)
            assert second.cumulative == first.amount + second.amount
            assert p.state is not None
            # a receipt lost on the way: the payer's charged total is behind the node's
            p.state.charged -= second.amount
            third = post(http)  # corrective 402 -> resync (own signature) -> paid
            assert third.cumulative == second.cumulative + third.amount
            assert p.state.charged == third.cumulative
            for _ in range(6):  # deposits run out: the payer tops up on chain
                post(http)
            assert p.state.deposited > 60_000
        record = node.payments.ledger.channel(p.state.channel_id)
        assert record is not None and record.charged == p.state.charged
        # a corrective 402 the payer did not sign is not believed
        forged = {"channelState": {"channelId": p.state.channel_id,
                                   "chargedCumulativeAmount": "0"},
                  "voucherState": {"signedMaxClaimable": "5", "signature": "0x" + "11" * 65}}
        assert p.resync(forged) is False and p.state.charged == record.charged
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
