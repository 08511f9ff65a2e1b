"""Both built-in client halves pay a real node (in-process app behind uvicorn, dev chain).

``exact``: the client half signs a transfer of exactly the 402's amount; the node
settles it on chain before answering: the transaction moves exactly that from the buyer
to the node, the payment response and its receipt check out, and the same signed
transfer sent again is refused with nothing moved. ``batch-settlement``: the client half
(over a Payer on an opened channel) pays, checks the receipt, and on a corrective 402
adopts the node's state and pays again; the money invariants hold after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD
from x402.schemas import PaymentRequired

from agoranet.errors import PaymentError
from agoranet.node.app import create_app
from agoranet.node.payment_setup import NodePayments
from agoranet.payments import x402wire
from agoranet.payments.pay.payer import Payer
from agoranet.payments.schemes import (
    SCHEME_BATCH_SETTLEMENT,
    SCHEME_EXACT,
    BatchSettlementClient,
    ExactClient,
    scheme_client,
)
from agoranet.payments.wallet import stablecoin_contract

from .conftest import Env
from .paid_support import PRICE_IN, PRICE_OUT, ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil, token_balance

pytestmark = [*needs_anvil, pytest.mark.timeout(120)]

PROMPT = "one two three"  # 3 prompt tokens for the fake engine


def cost(tokens_in: int, tokens_out: int) -> int:
    return (tokens_in * PRICE_IN + tokens_out * PRICE_OUT) // 1_000_000


@dataclass
class Served:
    url: str
    payments: NodePayments
    engine: ShortEngine
    address: str


@pytest.fixture
async def node(env: Env, tmp_path: Path) -> AsyncIterator[Served]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[5])
    payments = node_payments(env.dev.rpc_url, tmp_path / "ledger.sqlite", account)
    engine = ShortEngine(words=3, max_active=4, max_queue=16)
    app = create_app(engine, paid_settings(env.dev.rpc_url, tmp_path / "ledger.sqlite"), None,
                     payments)
    async with served(app) as url:
        yield Served(url, payments, engine, account.address)


def body(max_tokens: int) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens}


async def required_of(http: httpx.AsyncClient, max_tokens: int) -> PaymentRequired:
    """The node's 402 for an unpaid request."""
    answer = await http.post("/v1/chat/completions", json=body(max_tokens))
    assert answer.status_code == 402
    return x402wire.decode_payment_required(answer.headers[x402wire.PAYMENT_REQUIRED])


async def send(http: httpx.AsyncClient, max_tokens: int, header: str, request_id: str
               ) -> httpx.Response:
    return await http.post("/v1/chat/completions", json=body(max_tokens), headers={
        x402wire.PAYMENT_SIGNATURE: header, "x-request-id": request_id})


def supply(env: Env) -> int:
    return int(stablecoin_contract(env.w3, env.addresses).functions.totalSupply().call())


async def test_the_exact_client_half_pays_a_real_node_on_chain(
        env: Env, node: Served, payer: LocalAccount) -> None:
    token = env.addresses.require_stablecoin()
    worst = cost(3, 8)
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        required = await required_of(http, 8)
        requirement = next(a for a in required.accepts if a.scheme == SCHEME_EXACT)
        assert requirement.amount == str(worst)
        client = scheme_client(SCHEME_EXACT, account=payer, max_amount=worst,
                               pay_to=node.address, asset=token)
        assert isinstance(client, ExactClient)
        before = (token_balance(env.w3, env.addresses, payer.address),
                  token_balance(env.w3, env.addresses, node.address), supply(env))
        payment = client.pay(requirement)
        answer = await send(http, 8, payment.header, payment.request_id)
        assert answer.status_code == 200, answer.text
        response = x402wire.decode_json(answer.headers[x402wire.PAYMENT_RESPONSE], "response")
        paid = client.check(payment, response, model="fake", max_tokens=8)
        assert paid.amount == worst and paid.transaction.startswith("0x")
        assert paid.receipt is not None and paid.receipt.signer == node.address
        assert (paid.receipt.request_id, paid.receipt.tokens_in, paid.receipt.tokens_out) == \
            (payment.request_id, 3, 3)
        # on chain: one transfer of exactly that amount, from the buyer to the node
        receipt: Any = env.w3.eth.get_transaction_receipt(paid.transaction)  # type: ignore[arg-type]
        assert receipt["status"] == 1
        transfers = stablecoin_contract(env.w3, env.addresses).events.Transfer() \
            .process_receipt(receipt, errors=DISCARD)  # (and AuthorizationUsed)
        assert [(e["args"]["sender"], e["args"]["receiver"], e["args"]["value"])
                for e in transfers] == [(payer.address, node.address, worst)]
        after = (token_balance(env.w3, env.addresses, payer.address),
                 token_balance(env.w3, env.addresses, node.address), supply(env))
        assert after == (before[0] - worst, before[1] + worst, before[2])
        # the same signed transfer again: refused before the engine, nothing moves
        again = await send(http, 8, payment.header, "again")
        assert again.status_code == 402
        assert again.json()["error"]["type"] == "payment_required"
        assert (token_balance(env.w3, env.addresses, payer.address),
                token_balance(env.w3, env.addresses, node.address), supply(env)) == after
    assert node.engine.calls == 1
    assert client.adopt(required) is False


async def test_the_batch_settlement_client_half_pays_and_adopts_a_corrective_402(
        env: Env, node: Served, payer: LocalAccount, tmp_path: Path) -> None:
    payer_of = await asyncio.to_thread(Payer, node.url, env.w3, env.addresses, account=payer,
                                       state_dir=tmp_path / "payer")
    await asyncio.to_thread(payer_of.open, 1_000_000)
    client = scheme_client(SCHEME_BATCH_SETTLEMENT, payer=payer_of)
    assert isinstance(client, BatchSettlementClient)
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        required = await required_of(http, 8)
        assert client.adopt(required) is False  # a plain 402: nothing to adopt
        requirement = next(a for a in required.accepts if a.scheme == SCHEME_BATCH_SETTLEMENT)
        first = client.pay(requirement)
        answer = await send(http, 8, first.header, first.request_id)
        assert answer.status_code == 200, answer.text
        response = x402wire.decode_json(answer.headers[x402wire.PAYMENT_RESPONSE], "response")
        paid = client.check(first, response, model="fake", max_tokens=8)
        assert paid.receipt is not None and paid.amount == cost(3, 3) == paid.receipt.amount
        assert paid.transaction == ""  # the channel was funded before: no chain call
        # the same voucher again is stale: a corrective 402, which the half adopts
        stale = await send(http, 8, first.header, "stale")
        assert stale.status_code == 402
        corrective = x402wire.decode_payment_required(stale.headers[x402wire.PAYMENT_REQUIRED])
        assert corrective.error is not None and "mismatch" in corrective.error
        assert client.adopt(corrective) is True
        again = client.pay(next(a for a in corrective.accepts
                                if a.scheme == SCHEME_BATCH_SETTLEMENT))
        answer = await send(http, 8, again.header, again.request_id)
        assert answer.status_code == 200, answer.text
        response = x402wire.decode_json(answer.headers[x402wire.PAYMENT_RESPONSE], "response")
        second = client.check(again, response, model="fake", max_tokens=8)
    assert second.receipt is not None and second.receipt.cumulative == 2 * cost(3, 3)
    assert node.engine.calls == 2
    # money invariants: what the node charged is what the receipts add up to, what the
    # payer believes it owes and has recorded as spent, and within the highest voucher
    state = payer_of.state
    assert state is not None
    record = node.payments.ledger.channel(state.channel_id)
    assert record is not None
    receipts = node.payments.ledger.receipts(state.channel_id)
    assert record.charged == sum(r.amount for r in receipts) == state.charged == state.spent
    assert record.charged <= state.voucher
    # the half pays only the node of its channel, on its chain, in its scheme
    for change, says in (
            ({"pay_to": payer.address}, f"the requirement pays {payer.address} on "
             f"{env.dev.network}; this payer's channel is to {node.address} on "
             f"{env.dev.network}"),
            ({"pay_to": node.address.lower(), "network": "eip155:1"},
             f"the requirement pays {node.address.lower()} on eip155:1; this payer's channel "
             f"is to {node.address} on {env.dev.network}"),
            ({"scheme": SCHEME_EXACT},
             "a batch-settlement payer cannot pay a exact requirement")):
        with pytest.raises(PaymentError) as info:
            client.pay(requirement.model_copy(update=change))
        assert str(info.value) == says
    assert payer_of.state.voucher == state.voucher  # nothing was signed for them
