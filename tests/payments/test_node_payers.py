"""The gateway's payers (:class:`~agoranet.gateway.paying.NodePayers`) against served
in-process nodes on the dev chain: a free node is asked without paying; a paid node's
channel is opened once, on first use, with the gateway's deposit, even when requests race
for it, and pays; a restarted gateway reuses the saved channel (nothing more deposited),
and one the chain no longer backs is replaced and noted in the node's events; a node
that inflates its charged total is counted in the budget and spend log and banned.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.errors import ChargeDisputeError
from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.spendlog import SpendLog
from agoranet.node.app import create_app
from agoranet.node.payment_setup import NodePayments, build_payments
from agoranet.payments import x402wire
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.registry.offer import Offer

from .conftest import Env
from .money import assert_money_invariants
from .paid_support import ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil, token_balance

pytestmark = needs_anvil

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6}
DEPOSIT = 200_000
SMALL_DEPOSIT = 20_000  # room for one request's voucher and a bit
HEADROOM = 15_000  # a request's worst case: 3 * 1000 + 6 * 2000


@dataclass
class Node:
    url: str  # its OpenAI base (``/v1``)
    payments: NodePayments

    async def state(self) -> NodeState:
        """The gateway's view of the node: its URL and the offer it serves."""
        async with httpx.AsyncClient(timeout=10) as http:
            offer = await http.get(self.url.removesuffix("/v1") + "/.well-known/agoranet")
        return NodeState(self.url, offer=Offer.model_validate_json(offer.content))


@pytest.fixture
async def node(env: Env, tmp_path: Path) -> AsyncIterator[Node]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[6])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account, settle_interval=0.3)
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger, settle_interval=0.3), None,
                     payments)
    async with served(app) as url:
        yield Node(url + "/v1", payments)


async def _ask(url: str, auth: PayerAuth | None, *, stream: bool = False,
               payment: Payment | None = None) -> httpx.Response:
    """One request paid through ``auth`` with ``payment`` (by default a fresh one); the relay
    sets each request's maximum (its worst case), as here."""
    paid = auth.paying(payment or Payment(HEADROOM)) if auth is not None else None
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with http.stream("POST", "/chat/completions", json={**BODY, "stream": stream},
                               auth=paid) as answer:
            await answer.aread()
        return answer


async def test_a_channel_is_opened_once_on_first_use_and_kept_across_a_restart(
        env: Env, node: Node, payer: LocalAccount, tmp_path: Path) -> None:
    root = tmp_path / "channels"
    wallet = await asyncio.to_thread(token_balance, env.w3, env.addresses, payer.address)
    payers = NodePayers(env.dev.rpc_url, payer, root, DEPOSIT)
    assert payers.address == payer.address and payers.payers() == []
    free = NodeState("http://free.example/v1",
                     offer=Offer(engine="sim", models=(await node.state()).offer.models))
    assert await payers.auth(free) is None and await payers.auth(NodeState(node.url)) is None
    state = await node.state()
    auths = await asyncio.gather(*(payers.auth(state) for _ in range(3)))  # they race
    assert auths[0] is not None and all(a is auths[0] for a in auths)
    assert await payers.auth(state) is auths[0]
    [p] = payers.payers()
    assert p.state is not None and p.state.deposited == DEPOSIT
    assert (root / hashlib.sha256(node.url.encode()).hexdigest()[:16]).is_dir()
    payment = Payment(HEADROOM)
    paid = await _ask(node.url, auths[0], payment=payment)
    assert paid.status_code == 200, paid.text
    assert payment.receipt is not None
    assert p.state.charged == payment.receipt.amount > 0
    assert await asyncio.to_thread(token_balance, env.w3, env.addresses,
                                   payer.address) == wallet - DEPOSIT
    channel = p.state.channel_id
    payers.close()

    again = NodePayers(env.dev.rpc_url, payer, root, DEPOSIT)  # the gateway restarts
    state = await node.state()
    auth = await again.auth(state)
    [q] = again.payers()
    assert q.state is not None and (q.state.channel_id, q.state.deposited) == (channel, DEPOSIT)
    assert state.events == []  # chain and store agree: nothing to say
    assert await asyncio.to_thread(token_balance, env.w3, env.addresses,
                                   payer.address) == wallet - DEPOSIT
    assert (await _ask(node.url, auth)).status_code == 200
    assert_money_invariants(q, HEADROOM)
    outcome = await asyncio.to_thread(q.withdraw)  # the channel takes no new vouchers now
    assert outcome.state == "pending"
    # the node claims a channel being withdrawn (with every other unclaimed one, so this
    # claim comes before the next channel has earned anything: it stays unclaimed below)
    deadline = asyncio.get_running_loop().time() + 60
    while (await asyncio.to_thread(q.onchain))[1] != q.state.charged:
        assert asyncio.get_running_loop().time() < deadline, "the node never claimed"
        await asyncio.sleep(0.1)
    again.close()

    # restarted once more, with a smaller deposit: the replacement channel gets it, and is
    # topped up by it when the next voucher needs more
    third = NodePayers(env.dev.rpc_url, payer, root, SMALL_DEPOSIT)
    budget, spend = Budget(None), SpendLog(tmp_path / "spend.sqlite")
    third.count_in(budget, spend)
    state = await node.state()
    auth = await third.auth(state)
    [r] = third.payers()
    assert r.state is not None and r.state.channel_id != channel
    assert r.state.deposited == SMALL_DEPOSIT
    assert len(state.events) == 1 and "has a withdrawal under way" in state.events[0]
    assert state.failures == 0 and not state.banned()  # the node did nothing wrong
    # requests racing on the channel go one at a time, streamed ones too
    payments = [Payment(HEADROOM) for _ in range(5)]
    answers = await asyncio.gather(*(_ask(node.url, auth, payment=payments[i])
                                     for i in range(3)),
                                   *(_ask(node.url, auth, stream=True, payment=payments[i])
                                     for i in range(3, 5)))
    assert [a.status_code for a in answers] == [200] * 5
    assert all(payment.receipt is not None for payment in payments)
    receipts = sorted((payment.receipt for payment in payments if payment.receipt),
                      key=lambda receipt: receipt.cumulative)
    assert [x.cumulative for x in receipts] == [9_000 * n for n in range(1, 6)]
    assert r.state.charged == r.state.spent == 45_000
    assert r.state.deposited == 60_000  # two top-ups of the deposit on chain
    assert await asyncio.to_thread(r.onchain) == (60_000, 0)
    # an answer the gateway never saw (it paid, the node served, the answer was lost): the
    # node's corrective 402 at the next request carries its receipt, counted as spent
    lost = await asyncio.to_thread(r.pay, HEADROOM)
    served_lost = await asyncio.to_thread(
        httpx.post, f"{node.url}/chat/completions", json=BODY, timeout=30,
        headers={x402wire.PAYMENT_SIGNATURE: lost.header, "x-request-id": lost.request_id})
    assert served_lost.status_code == 200
    assert (await _ask(node.url, auth)).status_code == 200
    assert [(row.request_id, row.outcome, row.amount) for row in spend.rows()] == \
        [(lost.request_id, "resynced", 9_000)]
    assert budget.spent == 9_000 and r.state.charged == r.state.spent == 63_000
    assert_money_invariants(r, HEADROOM)
    third.close()
    spend.close()


async def test_a_node_inflating_its_charged_total_is_counted_and_banned(
        env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    """The node marks each request's whole voucher as charged; at the next request its
    corrective 402 claims a total no receipt backs: what it can claim is counted in the
    budget and spend log, the node is banned, and it is paid no more."""
    from agoranet.testing.payment_cheats import ResyncCheatLedger

    account: LocalAccount = Account.from_key(env.dev.private_keys[5])
    path = tmp_path / "cheat.sqlite"
    settings = paid_settings(env.dev.rpc_url, path)
    payments = build_payments(settings, account, ledger=ResyncCheatLedger(path))
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16), settings, None, payments)
    budget, spend = Budget(1_000_000), SpendLog(tmp_path / "spend.sqlite")
    payers = NodePayers(env.dev.rpc_url, payer, tmp_path / "channels", DEPOSIT)
    payers.count_in(budget, spend)
    async with served(app) as url:
        state = await Node(url + "/v1", payments).state()
        auth = await payers.auth(state)
        first = await _ask(state.url, auth)
        assert first.status_code == 200, first.text
        with pytest.raises(ChargeDisputeError):
            await _ask(state.url, auth)
    [p] = payers.payers()
    assert p.state is not None and p.state.disputed > 0
    assert budget.spent == p.state.disputed and budget.reserved == 0
    assert [(r.outcome, r.amount) for r in spend.rows()] == [("disputed", p.state.disputed)]
    assert state.banned() and any("no receipt backs" in e for e in state.events)
    payers.close()
    spend.close()
