"""A paid stream cut after tokens whose running receipt the buyer never got.

A node records each running receipt before it sends it, so a node that dies (or a
connection that drops) between the two charges a receipt the buyer never saw, for
tokens that did arrive. The payer cannot believe it owes that (only a receipt it
holds raises that), so it counts the tokens that arrived after its last receipt as
spent, at the offer's prices and within the voucher: "recorded spend >= claimed"
holds however the stream is cut, and a buyer counts nothing for tokens it did not
get. Served in-process nodes on the dev chain, real HTTP, through a node double that
holds back one running receipt (recorded in the ledger, never sent), passes N more
tokens and cuts the connection; each scenario ends with the money invariants.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoranet.node.app import create_app
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer

from .conftest import Env
from .money import assert_money_invariants
from .paid_support import CountingEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = needs_anvil

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 12, "stream": True}  # worst case 3 * 1000 + 12 * 2000 = 27,000
HEADROOM = 30_000  # each request's maximum (the voucher beyond the charged total)
EVERY = 4  # the node's running receipts: after 4 and 8 tokens (never sent: one of them)


def price(prompt: int, tokens: int) -> int:
    """The fake node's prices: 1,000 a prompt token, 2,000 a completion token."""
    return prompt * 1000 + tokens * 2000


class _Cut(Exception):
    """Raised inside the response: the server drops the connection."""


class CutAfterReceipt:
    """A node double: as the ``receipt``-th running receipt goes out it is sent or (``drop``)
    held back -- the node has recorded it either way -- then ``then`` more content frames
    pass and the connection is dropped at the next frame."""

    def __init__(self, app: ASGIApp, *, receipt: int, drop: bool, then: int) -> None:
        self.app, self.receipt, self.drop, self.then = app, receipt, drop, then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        receipts, passed, cutting = 0, 0, False

        async def double(message: Message) -> None:
            nonlocal receipts, passed, cutting
            body = message.get("body", b"") if message["type"] == "http.response.body" else b""
            if b'"agoranet.receipt.running"' in body:
                receipts += 1
                if receipts == self.receipt:
                    cutting = True
                    if self.drop:
                        return  # recorded in the node's ledger, never sent
                    await send(message)
                    return
            if cutting and body:
                if passed == self.then:
                    raise _Cut("the node double cuts the stream")
                passed += 1
            await send(message)

        await self.app(scope, receive, double if scope["type"] == "http" else send)


def _node(env: Env, tmp_path: Path, key: int, **double: Any) -> tuple[Any, Any]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[key])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account, receipt_every=EVERY)
    app = create_app(CountingEngine(max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger, receipt_every=EVERY), None, payments)
    return payments, CutAfterReceipt(app, **double)


def _payer(env: Env, url: str, account: LocalAccount, folder: Path) -> Payer:
    p = Payer(url, env.w3, env.addresses, account=account, state_dir=folder,
              max_per_request=HEADROOM)
    p.open(1_000_000)
    return p


def _cut(p: Payer, url: str) -> tuple[int, Payment]:
    """Stream BODY until the connection drops: (content tokens that arrived, its payment)."""
    words, payment = 0, Payment()
    with httpx.Client(base_url=url, auth=PayerAuth(p).paying(payment), timeout=30) as http:
        try:
            with http.stream("POST", "/v1/chat/completions", json=BODY) as cut:
                for line in cut.iter_lines():
                    words += '"content":"w' in line
        except httpx.HTTPError:
            pass  # the connection was dropped
    return words, payment


async def _acut(p: Payer, url: str) -> tuple[int, Payment]:
    """:func:`_cut` through an async client (the gateway's way)."""
    words, payment = 0, Payment()
    async with httpx.AsyncClient(base_url=url, auth=PayerAuth(p).paying(payment),
                                 timeout=30) as http:
        try:
            async with http.stream("POST", "/v1/chat/completions", json=BODY) as cut:
                async for line in cut.aiter_lines():
                    words += '"content":"w' in line
        except httpx.HTTPError:
            pass
    return words, payment


async def _settled(payments: Any, channel_id: str) -> int:
    """Wait until the node has let go of the channel, make it claim; what it charged."""
    for _ in range(200):
        record = payments.ledger.channel(channel_id)
        if record is not None and record.pending_request is None:
            break
        await asyncio.sleep(0.05)
    await asyncio.to_thread(payments.settler.tick, force=True)
    record = payments.ledger.channel(channel_id)
    assert record is not None
    return int(record.charged)


@pytest.mark.parametrize("client", ["sync", "async"])
async def test_tokens_after_the_last_receipt_the_buyer_got_are_counted_as_spent(
        env: Env, payer: LocalAccount, tmp_path: Path, client: str) -> None:
    """The node records its receipt for 8 tokens, never sends it, sends 2 more tokens and
    is cut: it charges (and claims) 8 tokens; the buyer holds the receipt for 4 and
    counts the 6 that arrived after it as spent, not as owed."""
    payments, double = _node(env, tmp_path, 6, receipt=2, drop=True, then=2)
    async with served(double) as url:  # type: ignore[arg-type]
        p = await asyncio.to_thread(_payer, env, url, payer, tmp_path / "payer")
        if client == "sync":
            words, cut = await asyncio.to_thread(_cut, p, url)
        else:
            words, cut = await _acut(p, url)
        assert p.state is not None
        claimed_by_node = await _settled(payments, p.state.channel_id)
    held = cut.receipt
    assert held is not None
    assert words == 10 and held.tokens_out == 4  # the receipt for 8 never came
    assert claimed_by_node == price(3, 8)  # the node charged the receipt it recorded
    claimed, _ = assert_money_invariants(p, HEADROOM)  # recorded spend >= claimed
    assert claimed == claimed_by_node
    beyond = price(3, 10) - price(3, 4)  # the 6 tokens after the receipt held
    assert cut.unreceipted == beyond
    assert p.state.charged == held.cumulative == price(3, 4)  # owed: its receipts only
    assert p.state.spent == price(3, 10)
    assert p.state.unreceipted == {held.request_id: beyond}
    p.close()


async def test_without_any_running_receipt_the_prompt_is_bounded_by_the_voucher(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """The first running receipt (4 tokens) is recorded, never sent; 1 more token, cut:
    the buyer holds no receipt and does not know the prompt's size, so it counts the
    largest prompt its voucher paid for (27,000 worst case within a 30,000 voucher: 6
    prompt tokens) with the 5 tokens that arrived."""
    payments, double = _node(env, tmp_path, 7, receipt=1, drop=True, then=1)
    async with served(double) as url:  # type: ignore[arg-type]
        p = await asyncio.to_thread(_payer, env, url, payer, tmp_path / "payer")
        words, cut = await asyncio.to_thread(_cut, p, url)
        assert p.state is not None
        claimed_by_node = await _settled(payments, p.state.channel_id)
    assert words == 5 and cut.receipt is None
    assert claimed_by_node == price(3, 4)
    assert_money_invariants(p, HEADROOM)
    assert cut.unreceipted == price(6, 5) <= HEADROOM
    assert p.state.charged == 0 and p.state.spent == price(6, 5)
    p.close()


@pytest.mark.parametrize(("drop", "beyond"), [(False, 0), (True, price(3, 8) - price(3, 4))],
                         ids=["receipt-sent", "receipt-held-back"])
async def test_a_cut_right_after_a_receipt_counts_only_what_arrived(
        env: Env, payer: LocalAccount, tmp_path: Path, drop: bool, beyond: int) -> None:
    """Cut at the frame after the receipt for 8 tokens: if that receipt arrived nothing
    is counted beyond it; if it was held back, exactly the 4 tokens it covers are."""
    payments, double = _node(env, tmp_path, 8, receipt=2, drop=drop, then=0)
    async with served(double) as url:  # type: ignore[arg-type]
        p = await asyncio.to_thread(_payer, env, url, payer, tmp_path / "payer")
        words, cut = await asyncio.to_thread(_cut, p, url)
        assert p.state is not None
        claimed_by_node = await _settled(payments, p.state.channel_id)
    assert words == 8 and claimed_by_node == price(3, 8)
    assert_money_invariants(p, HEADROOM)
    assert cut.unreceipted == beyond
    assert p.state.spent == price(3, 8) == claimed_by_node  # exactly what the node charged
    assert p.state.unreceipted == ({} if not drop else {
        cut.receipt.request_id if cut.receipt is not None else None: beyond})
    p.close()


async def test_the_receipt_shown_later_in_a_corrective_402_is_not_counted_twice(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """After the cut, the next request meets the node's corrective 402 carrying the receipt
    for 8 tokens the buyer never got: the buyer now owes it, but counted it as spent
    already, so its spend rises only by the next answer's cost."""
    payments, double = _node(env, tmp_path, 9, receipt=2, drop=True, then=2)
    async with served(double) as url:  # type: ignore[arg-type]
        p = await asyncio.to_thread(_payer, env, url, payer, tmp_path / "payer")
        await asyncio.to_thread(_cut, p, url)
        assert p.state is not None and p.state.spent == price(3, 10)

        paid = Payment()

        def again() -> httpx.Response:
            with httpx.Client(base_url=url, auth=PayerAuth(p).paying(paid), timeout=30) as http:
                return http.post("/v1/chat/completions", json={**BODY, "stream": False})

        after = await asyncio.to_thread(again)
        assert after.status_code == 200, after.text
        claimed_by_node = await _settled(payments, p.state.channel_id)
    assert paid.receipt is not None
    answer = paid.receipt.amount
    assert answer == price(3, 12)
    assert claimed_by_node == price(3, 8) + answer
    assert p.state.charged == claimed_by_node and p.state.disputed == 0  # resynced
    assert p.state.spent == price(3, 10) + answer  # the 8-token receipt was counted once
    assert p.state.unreceipted == {}
    assert_money_invariants(p, HEADROOM)
    p.close()
