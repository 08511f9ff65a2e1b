"""The gateway's node payer on the dev chain (``agoranet.gateway.node_payer``): each request
gets its verified receipt in its typed payment (nothing in httpx's ``extensions``), and a
channel with a small deposit is topped up on a task of its own, ahead of need, never by the
payer inside a request's auth flow; requests racing on the channel still go one at a time;
the money invariants hold after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.node.app import create_app
from agoranet.payments.pay.httpx_auth import PaidRequest
from agoranet.registry.offer import Offer

from .conftest import Env
from .money import assert_money_invariants
from .paid_support import ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = [*needs_anvil, pytest.mark.timeout(120)]

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6}
SMALL_DEPOSIT = 20_000  # room for one request's voucher and a bit
HEADROOM = 15_000  # a request's worst case: 3 * 1000 + 6 * 2000


@pytest.fixture
async def node_url(env: Env, tmp_path: Path) -> AsyncIterator[str]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[6])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account, settle_interval=0.3)
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger, settle_interval=0.3), None,
                     payments)
    async with served(app) as url:
        yield url + "/v1"


async def _ask(url: str, paid: PaidRequest, *, stream: bool = False) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http, \
            http.stream("POST", "/chat/completions", json={**BODY, "stream": stream},
                        auth=paid) as answer:
        await answer.aread()
    return answer


async def test_top_ups_run_on_their_own_task_and_receipts_come_typed(
        env: Env, node_url: str, payer: LocalAccount, tmp_path: Path) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        offer = await http.get(node_url.removesuffix("/v1") + "/.well-known/agoranet")
    state = NodeState(node_url, offer=Offer.model_validate_json(offer.content))
    payers = NodePayers(env.dev.rpc_url, payer, tmp_path / "channels", SMALL_DEPOSIT)
    try:
        first = await payers.paid(state, HEADROOM)
        assert first is not None
        [p] = payers.payers()
        assert p.state is not None and p.state.deposited == SMALL_DEPOSIT
        inline: list[Any] = []
        original = p.open

        def noted_open(deposit: int) -> str:  # the payer topping up by itself, in a flow
            inline.append(deposit)
            return original(deposit)

        p.open = noted_open  # type: ignore[method-assign]
        answer = await _ask(node_url, first)
        assert answer.status_code == 200, answer.text
        assert "agoranet_receipt" not in answer.extensions  # typed, not in extensions
        receipt = first.payment.receipt
        assert receipt is not None and receipt.amount == 9_000 == p.state.charged
        # requests racing on the channel, more than the deposit covers, streamed ones too
        paid = [await payers.paid(state, HEADROOM) for _ in range(5)]
        answers = await asyncio.gather(*(_ask(node_url, q, stream=i % 2 == 1)
                                         for i, q in enumerate(paid)))
        assert [a.status_code for a in answers] == [200] * 5
        receipts = sorted((q.payment.receipt for q in paid if q is not None),
                          key=lambda r: r.cumulative)  # type: ignore[union-attr]
        assert [r.cumulative for r in receipts] == [9_000 * n for n in range(2, 7)]
        assert p.state.charged == p.state.spent == 54_000
        assert inline == []  # every top-up ran on the node payer's task
        assert p.state.deposited > SMALL_DEPOSIT
        assert p.state.deposited % SMALL_DEPOSIT == 0
        for node_payer in payers._node_payers.values():
            await node_payer.aclose()  # a top-up started ahead of need ends
        assert (await asyncio.to_thread(p.onchain))[0] == p.state.deposited
        await asyncio.to_thread(assert_money_invariants, p, HEADROOM)
    finally:
        await payers.aclose()
