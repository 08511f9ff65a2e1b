"""A paid node in process (fake engine, real dev chain): payments, receipts, attacks.

Every refused payment must leave the engine idle and the ledger unchanged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.mechanisms.evm.batch_settlement import errors as bs_errors

from agoranet.payments import x402wire
from agoranet.payments.channels import initiate_withdraw
from agoranet.payments.ecdsa import SECP256K1_N, signature_problem
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.registry.offer import Offer
from agoranet.registry.signing import offer_signer

from .conftest import Env
from .paid_support import (
    BODY,
    WORST,
    CountingEngine,
    InProcessNode,
    asgi_client,
    header,
    in_process_node,
    node_payments,
    open_test_channel,
    other_token,
)
from .support import channel_state, needs_anvil

pytestmark = needs_anvil

ALLOWANCE = 20_000  # the payer's per-request maximum (above the worst case 13000)


Node = InProcessNode[CountingEngine]


@pytest.fixture(scope="module")
def node(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    engine = CountingEngine(delay=0.0, max_active=8, max_queue=64)
    with in_process_node(env, tmp_path_factory.mktemp("ledger"), engine) as started:
        yield started


@pytest.fixture
async def client(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(node.app) as c:
        yield c


async def post(client: httpx.AsyncClient, pay: str | None = None, **body: object) -> httpx.Response:
    headers = {x402wire.PAYMENT_SIGNATURE: pay} if pay else {}
    return await client.post("/v1/chat/completions", json={**BODY, **body}, headers=headers)


def receipt_of(response: httpx.Response) -> tuple[Receipt, dict[str, object]]:
    settle = x402wire.decode_json(response.headers[x402wire.PAYMENT_RESPONSE], "x")
    return Receipt.from_json(settle["extra"]["receipt"]), settle


async def test_offer_is_signed_and_free_routes_stay_free(client: httpx.AsyncClient,
                                                         node: Node) -> None:
    offer = Offer.model_validate_json((await client.get("/.well-known/agoranet")).content)
    assert offer.payment is not None and offer.payment.pay_to == node.address
    assert offer_signer(offer) == node.address
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/v1/models")).status_code == 200


async def test_unpaid_request_gets_402_with_requirements(client: httpx.AsyncClient,
                                                         node: Node, env: Env) -> None:
    calls = node.engine.calls
    response = await post(client)
    assert response.status_code == 402
    assert response.json()["error"]["type"] == "payment_required"
    required = x402wire.decode_payment_required(response.headers[x402wire.PAYMENT_REQUIRED])
    batch = next(a for a in required.accepts if a.scheme == "batch-settlement")
    assert (batch.amount, batch.network, batch.pay_to) == (str(WORST), env.dev.network,
                                                          node.address)
    assert batch.asset == node.asset and batch.extra["receiverAuthorizer"] == node.address
    assert batch.extra["prices"] == {"inputPerMillion": "1000000000",
                                     "outputPerMillion": "2000000000"}
    assert {a.scheme for a in required.accepts} == {"batch-settlement", "exact"}
    # a JSON error, with the requirements in its body too (for clients reading JSON), for
    # this resource
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    x402 = response.json()["x402"]
    assert x402 == x402wire.decode_json(response.headers[x402wire.PAYMENT_REQUIRED], "x")
    assert x402["resource"]["url"] == "http://node/v1/chat/completions"
    assert node.engine.calls == calls


async def test_a_bad_request_is_a_json_error_before_any_payment(
        client: httpx.AsyncClient, node: Node) -> None:
    calls = node.engine.calls
    response = await post(client, messages="not a list")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert x402wire.PAYMENT_REQUIRED not in response.headers and node.engine.calls == calls


async def test_paid_plain_and_streamed(client: httpx.AsyncClient, node: Node, env: Env,
                                       payer: LocalAccount) -> None:
    channel = open_test_channel(env, payer, node.address, 1_000_000)
    first = await post(client, header(channel, ALLOWANCE, ALLOWANCE, node.address, node.asset))
    assert first.status_code == 200, first.text
    receipt, settle = receipt_of(first)
    verify_receipt(receipt, node.address)
    assert (receipt.tokens_in, receipt.tokens_out, receipt.amount) == (3, 5, WORST)
    assert settle["extra"]["chargedAmount"] == str(WORST)
    # x402's channelState: the channel as on chain (1,000,000 deposited, nothing claimed,
    # no withdrawal or refund), with what the node has charged
    assert settle["extra"]["channelState"] == {
        "channelId": channel.channel_id.lower(), "balance": "1000000", "totalClaimed": "0",
        "withdrawRequestedAt": 0, "refundNonce": "0", "chargedCumulativeAmount": str(WORST)}
    # headroom (20000 - 13000) carries: the next voucher is charged + max
    nxt = WORST + ALLOWANCE
    async with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True},
                             headers={x402wire.PAYMENT_SIGNATURE: header(
                                 channel, nxt, ALLOWANCE, node.address, node.asset)}) as r:
        assert r.status_code == 200
        events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["object"] == "agoranet.receipt" and last["choices"] == []
    streamed = Receipt.from_json(last["agoranet_receipt"])
    verify_receipt(streamed, node.address)
    assert (streamed.amount, streamed.cumulative) == (WORST, 2 * WORST)
    record = node.payments.ledger.channel(channel.channel_id)
    assert record is not None and record.charged == 2 * WORST


def high_s_twin(signature: bytes) -> bytes:
    """The malleable twin of a signature: s' = n - s and the other v (same signer)."""
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])


async def test_attacks_are_refused_before_inference(client: httpx.AsyncClient, node: Node,
                                                    env: Env, payer: LocalAccount) -> None:
    """Each attack on a funded channel (but "unfunded") is refused for its own reason: the
    x402 error code in the body and in the PAYMENT-REQUIRED header, not merely some 4xx."""
    deposit = 100_000
    channel = open_test_channel(env, payer, node.address, deposit)
    ok = await post(client, header(channel, ALLOWANCE, ALLOWANCE, node.address, node.asset))
    assert ok.status_code == 200
    ledger = node.payments.ledger
    charged = ledger.channel(channel.channel_id).charged  # type: ignore[union-attr]
    nxt = charged + ALLOWANCE
    other = Account.create()
    withdrawing = open_test_channel(env, payer, node.address, deposit)
    initiate_withdraw(env.w3, env.addresses, payer, withdrawing.config, deposit)
    unfunded = open_test_channel(env, payer, node.address, 0)
    # funded channels whose config does not fit this node in exactly one field
    wrong_receiver = open_test_channel(env, payer, other.address, deposit,
                                       receiverAuthorizer=node.address)
    wrong_authorizer = open_test_channel(env, payer, node.address, deposit,
                                         receiverAuthorizer=other.address)
    wrong_token = open_test_channel(env, payer, node.address, deposit,
                                    token=other_token(env, payer.address, deposit))
    wrong_delay = open_test_channel(env, payer, node.address, deposit, withdrawDelay=1800)
    # a channel the node has served and claimed on chain (WORST)
    claimed = open_test_channel(env, payer, node.address, deposit)
    served = await post(client, header(claimed, ALLOWANCE, ALLOWANCE, node.address,
                                       node.asset))
    assert served.status_code == 200
    await asyncio.to_thread(node.payments.settler.tick, force=True)
    assert channel_state(env.w3, env.addresses, claimed.channel_id)[1] == WORST
    for refused in (wrong_receiver, wrong_authorizer, wrong_token, wrong_delay):
        assert channel_state(env.w3, env.addresses, refused.channel_id)[0] == deposit
    sig = bs_errors.ERR_INVALID_VOUCHER_SIGNATURE
    attacks: dict[str, tuple[str, str]] = {
        "garbage base64": ("%%%not-base64%%%", "invalid_payload"),
        "base64 of junk": ("aGVsbG8=", "invalid_payload"),
        "wrong key": (header(channel, nxt, ALLOWANCE, node.address, node.asset, key=other), sig),
        "high-s twin": (header(channel, nxt, ALLOWANCE, node.address, node.asset,
                               mutate=high_s_twin), sig),
        "v 0 or 1": (header(channel, nxt, ALLOWANCE, node.address, node.asset,
                            mutate=lambda raw: raw[:64] + bytes([raw[64] - 27])), sig),
        "other receiver": (header(wrong_receiver, ALLOWANCE, ALLOWANCE, node.address,
                                  node.asset), bs_errors.ERR_RECEIVER_MISMATCH),
        "other receiver authorizer": (header(wrong_authorizer, ALLOWANCE, ALLOWANCE,
                                             node.address, node.asset),
                                      bs_errors.ERR_RECEIVER_AUTHORIZER_MISMATCH),
        "other token": (header(wrong_token, ALLOWANCE, ALLOWANCE, node.address, node.asset),
                        bs_errors.ERR_TOKEN_MISMATCH),
        "other withdraw delay": (header(wrong_delay, ALLOWANCE, ALLOWANCE, node.address,
                                        node.asset), bs_errors.ERR_WITHDRAW_DELAY_MISMATCH),
        "config of another channel": (header(channel, nxt, ALLOWANCE, node.address, node.asset,
                                             channel_id=wrong_delay.channel_id),
                                      bs_errors.ERR_CHANNEL_ID_MISMATCH),
        "other chain": (header(channel, nxt, ALLOWANCE, node.address, node.asset,
                               network="eip155:8453"), bs_errors.ERR_NETWORK_MISMATCH),
        "replay": (header(channel, ALLOWANCE, ALLOWANCE, node.address, node.asset),
                   bs_errors.ERR_CUMULATIVE_AMOUNT_MISMATCH),
        "equal to accepted": (header(channel, ALLOWANCE, ALLOWANCE - charged, node.address,
                                     node.asset), "insufficient_amount"),
        "above deposit": (header(channel, deposit + 1, deposit + 1 - charged, node.address,
                                 node.asset), bs_errors.ERR_CUMULATIVE_EXCEEDS_BALANCE),
        "below worst case": (header(channel, charged + WORST - 1, WORST - 1, node.address,
                                    node.asset), "insufficient_amount"),
        "at what was claimed": (header(claimed, WORST, ALLOWANCE, node.address, node.asset),
                                bs_errors.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED),
        "below what was claimed": (header(claimed, WORST - 1, ALLOWANCE, node.address,
                                          node.asset),
                                   bs_errors.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED),
        "unfunded": (header(unfunded, ALLOWANCE, ALLOWANCE, node.address, node.asset),
                     bs_errors.ERR_CHANNEL_NOT_FOUND),
    }
    time.sleep(0.3)  # past the node's state cache for the withdrawing channel
    attacks["withdrawing"] = (header(withdrawing, ALLOWANCE, ALLOWANCE, node.address,
                                     node.asset),
                              "invalid_batch_settlement_evm_channel_withdrawing")
    calls = node.engine.calls
    for name, (pay, code) in attacks.items():
        response = await post(client, pay)
        assert response.status_code == 402, (name, response.status_code, response.text)
        error = response.json()["error"]
        assert error["code"] == code, (name, error)
        assert error["message"], name
        required = x402wire.decode_payment_required(response.headers[x402wire.PAYMENT_REQUIRED])
        assert required.error == code, name
        assert node.engine.calls == calls, name
        assert ledger.channel(channel.channel_id).charged == charged, name  # type: ignore[union-attr]
    for refused in (withdrawing, unfunded, wrong_receiver, wrong_authorizer, wrong_token,
                    wrong_delay):
        record = ledger.channel(refused.channel_id)
        assert record is None or record.voucher_signature == "0x"
    record = ledger.channel(channel.channel_id)
    assert record is not None and record.pending_request is None
    # the honest next voucher still works after all that; the stored voucher is canonical
    assert (await post(client, header(channel, nxt, ALLOWANCE, node.address,
                                      node.asset))).status_code == 200
    record = ledger.channel(channel.channel_id)
    assert record is not None and signature_problem(
        bytes.fromhex(record.voucher_signature.removeprefix("0x"))) is None
    # the channel above what was claimed is served, from the claimed baseline
    above = await post(client, header(claimed, WORST + ALLOWANCE, ALLOWANCE, node.address,
                                      node.asset))
    assert above.status_code == 200, above.text


async def test_fifty_concurrent_requests_on_one_channel(client: httpx.AsyncClient, node: Node,
                                                        env: Env, payer: LocalAccount) -> None:
    """All carry the one voucher the channel's state allows: exactly one is served."""
    channel = open_test_channel(env, payer, node.address, 1_000_000)
    node.engine.delay = 0.01
    try:
        pay = header(channel, ALLOWANCE, ALLOWANCE, node.address, node.asset)
        calls = node.engine.calls
        responses = await asyncio.gather(*(post(client, pay) for _ in range(50)))
    finally:
        node.engine.delay = 0.0
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1 and codes.count(402) == 49, codes
    assert node.engine.calls == calls + 1
    record = node.payments.ledger.channel(channel.channel_id)
    assert record is not None and record.charged == WORST
    assert len(node.payments.ledger.receipts(channel.channel_id)) == 1


async def test_settlement_claims_what_receipts_cover(node: Node, env: Env) -> None:
    ledger = node.payments.ledger
    before = {e.channel_id: e.claimed for e in ledger.earnings()}
    outcome = await asyncio.to_thread(node.payments.settler.tick, force=True)
    assert outcome is not None and outcome.claim_tx and outcome.settle_tx
    assert outcome.failed == () and outcome.settle_error == ""
    receipts = ledger.receipts()
    for cid, total in outcome.claimed.items():
        assert total == sum(r.amount for r in receipts if r.channel_id == cid)
        assert channel_state(env.w3, env.addresses, cid)[1] == total
    assert outcome.settled == sum(t - before[cid] for cid, t in outcome.claimed.items())
    # money invariants on every channel the node has seen: claimed on chain <= receipted
    # (here equal, all of it claimed), and the ledger agrees with the chain
    for e in ledger.earnings():
        receipted = sum(r.amount for r in receipts if r.channel_id == e.channel_id)
        onchain = channel_state(env.w3, env.addresses, e.channel_id)[1]
        assert onchain == e.claimed == e.charged == receipted, e
        assert (e.unclaimed, e.pending_settle, e.claim_failures) == (0, 0, 0), e
        assert e.settled == e.claimed, e
    assert ledger.unsettled() == 0 and ledger.claim_failures() == []


def test_ledger_file(node: Node) -> None:
    assert Path(str(node.payments.ledger.path)).is_file()


def test_a_node_refuses_to_start_on_a_damaged_ledger(env: Env, tmp_path: Path) -> None:
    """#12: an empty (0-byte) ledger is not a fresh one: the node does not start on it."""
    from agoranet.errors import LedgerError

    account: LocalAccount = Account.from_key(env.dev.private_keys[2])
    ledger = tmp_path / "ledger.sqlite"
    ledger.write_bytes(b"")
    with pytest.raises(LedgerError, match="empty"):
        node_payments(env.dev.rpc_url, ledger, account)
    assert ledger.read_bytes() == b""
