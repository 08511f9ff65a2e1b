"""The unmodified x402 SDK client (its httpx client, EVM schemes registered) pays a node.

The node is the in-process app behind a real uvicorn server, on the dev chain.
``exact`` moves the worst case on chain per request; ``batch-settlement``
deposits with the first payment and then sends one cumulative voucher per
request, including a voucher *below* an earlier one (a small request after a
big one that used little of its headroom), which the x402 EVM spec accepts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.batch_settlement.client.scheme import BatchSettlementEvmScheme
from x402.mechanisms.evm.exact.client import ExactEvmScheme as ExactEvmClient
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC
from x402.schemas import PaymentPayload

from agoranet.node.app import create_app
from agoranet.node.payment_setup import NodePayments
from agoranet.payments import x402wire
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.wallet import stablecoin_contract

from .conftest import Env
from .paid_support import PRICE_IN, PRICE_OUT, ShortEngine, node_payments, paid_settings, served
from .support import channel_state, needs_anvil, token_balance

pytestmark = needs_anvil

PROMPT = "one two three"  # 3 prompt tokens for the fake engine


def worst(max_tokens: int) -> int:
    return (3 * PRICE_IN + max_tokens * PRICE_OUT) // 1_000_000


@dataclass
class Served:
    url: str
    payments: NodePayments
    engine: ShortEngine
    address: str


@pytest.fixture
async def node(env: Env, tmp_path: Path) -> AsyncIterator[Served]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[4])
    payments = node_payments(env.dev.rpc_url, tmp_path / "ledger.sqlite", account)
    engine = ShortEngine(words=3, max_active=4, max_queue=16)
    app = create_app(engine, paid_settings(env.dev.rpc_url, tmp_path / "ledger.sqlite"), None,
                     payments)
    async with served(app) as url:
        yield Served(url, payments, engine, account.address)


def sdk_client(env: Env, payer: LocalAccount, scheme: str) -> x402Client:
    """The SDK's client with both EVM schemes; the selector picks ``scheme`` from the 402.

    The dev chain's stablecoin is not one of the SDK's default assets, so it is
    allowed explicitly (the SDK's own spend-control setting), capped per payment.
    """
    client = x402Client(payment_requirements_selector=lambda _version, reqs: next(
        r for r in reqs if r.scheme == scheme))
    client.set_spend_controls({"allowed_assets": [{
        "network": env.dev.network, "asset": env.addresses.require_stablecoin(),
        "max_amount_per_payment": "1000000"}]})
    register_exact_evm_client(client, EthAccountSigner(payer))
    # with an RPC connection the batch client can resync from a corrective 402
    client.register("eip155:*", BatchSettlementEvmScheme(
        EthAccountSignerWithRPC(payer, env.dev.rpc_url)))
    return client


def supply(env: Env) -> int:
    return int(stablecoin_contract(env.w3, env.addresses).functions.totalSupply().call())


async def ask(http: x402HttpxClient, url: str, max_tokens: int, *, stream: bool = False
              ) -> tuple[int, Receipt | None, str]:
    body = {"model": "fake", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "stream": stream}
    response = await http.post(f"{url}/v1/chat/completions", json=body)
    if response.status_code != 200:
        return response.status_code, None, response.text
    header = response.headers.get(x402wire.PAYMENT_RESPONSE)
    if header:
        settle = x402wire.decode_json(header, "PAYMENT-RESPONSE")
    else:  # a stream: the receipt is in the final SSE event
        events = [json.loads(line[6:]) for line in response.text.splitlines()
                  if line.startswith("data: {")]
        settle = next(e["x402_payment_response"] for e in events
                      if e.get("object") == "agoranet.receipt")
    return 200, Receipt.from_json(settle["extra"]["receipt"]), settle.get("transaction", "")


async def test_exact(env: Env, node: Served, payer: LocalAccount) -> None:
    before = (token_balance(env.w3, env.addresses, payer.address),
              token_balance(env.w3, env.addresses, node.address), supply(env))
    async with x402HttpxClient(sdk_client(env, payer, "exact"), timeout=30.0) as http:
        results = [await ask(http, node.url, n) for n in (8, 4)]
    paid = 0
    for (status, receipt, tx), n in zip(results, (8, 4), strict=True):
        assert status == 200 and receipt is not None, results
        assert tx.startswith("0x"), "exact settles on chain"
        verify_receipt(receipt, node.address)
        assert receipt.amount == worst(n)  # exact moves the worst case
        paid += receipt.amount
    assert node.engine.calls == 2
    assert token_balance(env.w3, env.addresses, payer.address) == before[0] - paid
    assert token_balance(env.w3, env.addresses, node.address) == before[1] + paid
    assert supply(env) == before[2]


async def test_batch_settlement(env: Env, node: Served, payer: LocalAccount) -> None:
    before = (token_balance(env.w3, env.addresses, payer.address), supply(env))
    sizes = [20, 20, 5, 4, 6]  # after 20 (3 used), 5's voucher is below the one before
    async with x402HttpxClient(sdk_client(env, payer, "batch-settlement"), timeout=30.0) as http:
        results = [await ask(http, node.url, n) for n in sizes]
        streamed = await ask(http, node.url, 7, stream=True)
        after_stream = await ask(http, node.url, 5)  # the client resyncs from a corrective 402
    results += [streamed, after_stream]
    assert [r[0] for r in results] == [200] * 7, results
    receipts = [r[1] for r in results if r[1] is not None]
    assert results[0][2].startswith("0x"), "the deposit went on chain with the first payment"
    assert all(r[2] == "" for r in results[1:])
    ledger = node.payments.ledger
    cid = receipts[0].channel_id
    cumulative = 0
    for receipt in receipts:
        verify_receipt(receipt, node.address)
        assert receipt.tokens_out == 3 and receipt.amount == (3 * PRICE_IN + 3 * PRICE_OUT) \
            // 1_000_000
        cumulative += receipt.amount
        assert receipt.cumulative == cumulative and receipt.channel_id == cid
    assert node.engine.calls == 7
    record = ledger.channel(cid)
    assert record is not None and record.charged == cumulative
    # the last voucher is charged-before + the last request's worst case, below earlier ones
    assert record.voucher_amount == cumulative - receipts[-1].amount + worst(5)
    balance, _ = channel_state(env.w3, env.addresses, cid)
    deposit = before[0] - token_balance(env.w3, env.addresses, payer.address)
    assert balance == deposit > cumulative
    outcome = await asyncio.to_thread(node.payments.settler.tick, force=True)
    assert outcome is not None and outcome.claimed == {cid: cumulative}
    assert channel_state(env.w3, env.addresses, cid) == (balance, cumulative)
    assert supply(env) == before[1]


async def test_exact_replayed_at_once_is_paid_once(env: Env, node: Served,
                                                   payer: LocalAccount) -> None:
    """One EIP-3009 authorization sent five times concurrently: one answer, one transfer."""
    async with httpx.AsyncClient(base_url=node.url, timeout=30.0) as http:
        body = {"model": "fake", "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 4}
        challenge = await http.post("/v1/chat/completions", json=body)
        assert challenge.status_code == 402
        required = x402wire.decode_payment_required(
            challenge.headers[x402wire.PAYMENT_REQUIRED])
        accept = next(a for a in required.accepts if a.scheme == "exact")
        inner = ExactEvmClient(EthAccountSigner(payer)).create_payment_payload(accept)
        header = x402wire.encode_model(PaymentPayload(payload=inner, accepted=accept))
        before = token_balance(env.w3, env.addresses, payer.address)
        responses = await asyncio.gather(*(
            http.post("/v1/chat/completions", json=body,
                      headers={x402wire.PAYMENT_SIGNATURE: header}) for _ in range(5)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 402, 402, 402, 402], codes
    assert node.engine.calls == 1
    assert token_balance(env.w3, env.addresses, payer.address) == before - worst(4)
