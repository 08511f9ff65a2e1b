"""The node's PaymentAcceptor rule by rule: each refusal's x402 reason, what is charged and
receipted, and what the ledger keeps (fake chain reader and settlers: logic only).

The same refusals through a paid node on the real dev chain, on funded channels, are in
test_paid_node.py; here every branch of the acceptor runs in a few milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, SettleResponse, VerifyResponse

from agoranet.chain.executor import ChainExecutor
from agoranet.errors import ChainError, LedgerError, PaymentRequiredError
from agoranet.market import TokenPrices
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import Authorization, PaymentAcceptor, PaymentTerms
from agoranet.payments.accept.ledger import MAX_AMOUNT
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import Receipt, verify_receipt

from .acceptor_support import (
    BATCH,
    CHAIN,
    CID,
    DEPOSIT,
    MAX,
    NETWORK,
    NODE,
    NONCE,
    OTHER,
    PAYER,
    TERMS,
    TOKEN,
    WORST,
    Chain,
    accepted,
    acceptor,
    exact_pay,
    pay,
    voucher_payload,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def chain() -> Chain:
    return Chain()


@pytest.fixture
def executor() -> Iterator[ChainExecutor]:
    ex = ChainExecutor(workers=1, timeout=1.0)
    yield ex
    ex.close()


@pytest.fixture
def ledger() -> Iterator[SqliteLedger]:
    store = SqliteLedger(":memory:")
    yield store
    store.close()


async def refusal(acc: PaymentAcceptor, header: str | None, worst: int = WORST,
                  request_id: str = "r-refused") -> PaymentRequiredError:
    with pytest.raises(PaymentRequiredError) as info:
        await acc.authorize(header, worst, request_id)
    return info.value


# ------------------------------------------------------------------ the 402


def test_the_requirements_name_this_node_and_its_terms(chain: Chain, ledger: SqliteLedger,
                                                       executor: ChainExecutor) -> None:
    prices = TokenPrices(1_000, 2_000)
    required = acceptor(chain, ledger, executor).payment_required(
        WORST, prices, error="why", corrective={"channelState": {"x": 1}},
        resource="http://node/v1/chat/completions")
    assert required.x402_version == 2 and required.error == "why"
    assert required.resource is not None
    assert required.resource.url == "http://node/v1/chat/completions"
    batch, exact = required.accepts
    assert (batch.scheme, exact.scheme) == (BATCH, "exact")
    for req in (batch, exact):
        assert (req.network, req.asset, req.amount, req.pay_to, req.max_timeout_seconds) == \
            (NETWORK, TOKEN, str(WORST), NODE.address, 3600)
        assert req.extra["name"] == "USD Coin" and req.extra["version"] == "2"
        assert req.extra["prices"] == {"inputPerMillion": "1000", "outputPerMillion": "2000"}
    assert batch.extra["receiverAuthorizer"] == NODE.address
    assert batch.extra["withdrawDelay"] == 900 and batch.extra["assetTransferMethod"] == "eip3009"
    assert batch.extra["channelState"] == {"x": 1}  # the corrective part: batch only
    assert "minDeposit" not in batch.extra
    assert set(exact.extra) == {"name", "version", "prices"}
    # no exact settler: batch-settlement only; no resource, no prices
    plain = acceptor(chain, ledger, executor, exact=False).payment_required(WORST, None)
    assert [a.scheme for a in plain.accepts] == [BATCH] and plain.resource is None
    assert plain.error is None and "prices" not in plain.accepts[0].extra


def test_a_scheme_the_node_cannot_settle_is_left_out_wherever_it_is_listed(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    terms = PaymentTerms(chain_id=CHAIN, asset=TOKEN, pay_to=NODE.address,
                         receiver_authorizer=NODE.address, token_name="USD Coin",
                         token_version="2", schemes=("exact", BATCH))
    required = acceptor(chain, ledger, executor, exact=False, terms=terms).payment_required(
        WORST, None)
    assert [a.scheme for a in required.accepts] == [BATCH]


def test_a_minimum_deposit_is_at_least_the_request() -> None:
    terms = PaymentTerms(chain_id=CHAIN, asset=TOKEN, pay_to=NODE.address,
                         receiver_authorizer=NODE.address, token_name="T", token_version="1",
                         withdraw_delay=1800, min_deposit=50_000, max_timeout_seconds=60)
    small = terms.requirement(BATCH, 10_000)
    assert small.extra["minDeposit"] == "50000" and small.extra["withdrawDelay"] == 1800
    assert small.max_timeout_seconds == 60 and small.extra["name"] == "T"
    assert terms.requirement(BATCH, 70_000).extra["minDeposit"] == "70000"
    assert "minDeposit" not in terms.requirement("exact", 10_000).extra
    assert TERMS.network == NETWORK and TERMS.schemes == (BATCH, "exact")
    assert (TERMS.withdraw_delay, TERMS.min_deposit, TERMS.max_timeout_seconds) == (900, 0, 3600)


# ------------------------------------------------------------------ refusals before the voucher


async def test_no_payment_is_a_402_saying_what_the_request_costs(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    for header in (None, ""):
        problem = await refusal(acc, header)
        assert problem.reason == "payment_required"
        assert problem.message == ("this request costs up to 13000 base units: pay with x402 "
                                   "(PAYMENT-SIGNATURE header)")


@pytest.mark.parametrize(("change", "reason", "says"), [
    ({"scheme": "upto"}, "unsupported_scheme", "scheme 'upto' is not accepted here"),
    ({"network": "eip155:8453"}, bs_errors.ERR_NETWORK_MISMATCH,
     f"payment is for network eip155:8453, this node is on {NETWORK}"),
    ({"asset": OTHER}, bs_errors.ERR_TOKEN_MISMATCH,
     f"payment is in token {OTHER}, this node takes {TOKEN}"),
    ({"payTo": OTHER}, bs_errors.ERR_RECEIVER_MISMATCH,
     f"payment is to {OTHER}, not to this node ({NODE.address})"),
    ({"amount": "lots"}, "invalid_payload",
     f"accepted.amount is not a decimal integer (at most {MAX_AMOUNT})"),
    ({"amount": str(2**63)}, "invalid_payload",
     f"accepted.amount is out of range for a uint63 (at most {MAX_AMOUNT})"),
    ({"amount": str(WORST - 1)}, "insufficient_amount",
     f"payment authorizes {WORST - 1} base units but this request may cost {WORST}"),
])
async def test_a_payment_not_for_this_node_or_request_is_refused_for_its_reason(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor, change: dict[str, Any],
        reason: str, says: str) -> None:
    acc = acceptor(chain, ledger, executor)
    problem = await refusal(acc, x402wire.encode_json({
        "x402Version": 2, "payload": voucher_payload(MAX), "accepted": accepted(**change)}))
    assert (problem.reason, problem.message, problem.status_code) == (reason, says, 402)
    assert ledger.channel(CID) is None and chain.reads == 0


async def test_addresses_compare_in_any_letter_case_and_the_worst_case_is_enough(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    auth = await acc.authorize(pay(WORST, WORST, asset=TOKEN.lower(),
                                   payTo=NODE.address.lower()), WORST, "r1")
    assert auth.max_amount == WORST and auth.hold is not None
    assert auth.hold.max_amount == WORST and auth.hold.voucher_amount == WORST


# ------------------------------------------------------------------ vouchers


async def test_a_voucher_is_held_charged_and_receipted(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    auth = await acc.authorize(pay(MAX), WORST, "r1")
    assert (auth.scheme, auth.request_id, auth.payer, auth.max_amount, auth.signer) == \
        (BATCH, "r1", PAYER.address, MAX, PAYER.address)
    assert auth.settle is None and auth.done is False and auth.extra == {}
    assert auth.state is not None and auth.state.balance == DEPOSIT
    assert auth.requirements.amount == str(MAX) and auth.requirements.scheme == BATCH
    record = ledger.channel(CID)
    assert record is not None and record.voucher_amount == MAX and record.pending_request == "r1"
    assert record.payer == PAYER.address and record.charged == 0
    receipt, response = acc.charge(auth, 3, 4, 11_000)
    verify_receipt(receipt, NODE.address)
    assert (receipt.request_id, receipt.channel_id, receipt.tokens_in, receipt.tokens_out,
            receipt.amount, receipt.cumulative, receipt.chain_id) == \
        ("r1", CID, 3, 4, 11_000, 11_000, CHAIN)
    assert auth.done is True
    assert (response.success, response.payer, response.transaction, response.network,
            response.amount) == (True, PAYER.address, "", NETWORK, "")
    assert response.extra == {
        "chargedAmount": "11000", "receipt": receipt.to_json(),
        "channelState": {"channelId": CID, "balance": str(DEPOSIT), "totalClaimed": "0",
                         "withdrawRequestedAt": 0, "refundNonce": "0",
                         "chargedCumulativeAmount": "11000"}}
    record = ledger.channel(CID)
    assert record is not None and record.charged == 11_000 and record.pending_request is None
    assert acc.release(auth) is None  # charged: nothing left to release
    # the next voucher: charged total plus the new maximum; the charge never passes the hold
    nxt = await acc.authorize(pay(11_000 + MAX), WORST, "r2")
    second, _ = acc.charge(nxt, 3, 100, 10 * MAX)
    assert (second.amount, second.cumulative) == (MAX, 11_000 + MAX)
    # money invariant: the ledger's charged total is what the receipts add up to
    assert ledger.channel(CID).charged == sum(  # type: ignore[union-attr]
        r.amount for r in ledger.receipts(CID))


async def test_a_stale_voucher_gets_a_corrective_402_with_what_backs_the_total(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    first = await acc.authorize(pay(MAX), WORST, "r1")
    receipt, _ = acc.charge(first, 3, 5, WORST)
    problem = await refusal(acc, pay(MAX), request_id="r2")  # the same voucher again
    assert problem.reason == bs_errors.ERR_CUMULATIVE_AMOUNT_MISMATCH
    assert problem.message == (f"voucher for {MAX} does not equal charged ({WORST}) plus this "
                               f"request's maximum ({MAX}) = {WORST + MAX}")
    assert problem.status_code == 402
    signed = voucher_payload(MAX)["voucher"]["signature"]
    assert problem.corrective == {
        "channelState": {"channelId": CID, "balance": str(DEPOSIT), "totalClaimed": "0",
                         "withdrawRequestedAt": 0, "refundNonce": "0",
                         "chargedCumulativeAmount": str(WORST)},
        "voucherState": {"signedMaxClaimable": str(MAX), "signature": signed},
        "receipt": receipt.to_json()}
    # and the corrective amount is taken
    auth = await acc.authorize(pay(WORST + MAX), WORST, "r2")
    assert auth.hold is not None and auth.hold.charged_before == WORST


async def test_a_channel_first_seen_with_a_wrong_voucher_has_no_voucher_to_show(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    chain.claimed = 5_000  # claimed on chain before this node's ledger knew the channel
    acc = acceptor(chain, ledger, executor)
    problem = await refusal(acc, pay(MAX))  # must be 5000 + 20000
    assert problem.reason == bs_errors.ERR_CUMULATIVE_AMOUNT_MISMATCH
    assert problem.corrective is not None
    assert problem.corrective["channelState"]["chargedCumulativeAmount"] == "5000"
    assert problem.corrective["channelState"]["totalClaimed"] == "5000"
    assert set(problem.corrective) == {"channelState"}
    assert (await acc.authorize(pay(5_000 + MAX), WORST, "r1")).hold is not None


async def test_a_busy_channel_and_a_charged_request_are_refused(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    held = await acc.authorize(pay(MAX), WORST, "r1")
    busy = await refusal(acc, pay(MAX), request_id="r2")
    assert (busy.reason, busy.status_code) == (bs_errors.ERR_CHANNEL_BUSY, 402)
    assert busy.message == "the channel is serving another request; retry when it has finished"
    assert busy.corrective is None
    acc.charge(held, 3, 5, WORST)
    again = await refusal(acc, pay(WORST + MAX), request_id="r1")  # r1 was charged
    assert (again.reason, again.status_code) == ("request_already_charged", 409)
    assert again.message == "request r1 was already served and charged"


@pytest.mark.parametrize(("balance", "claimed", "voucher", "reason"), [
    (0, 0, MAX, bs_errors.ERR_CHANNEL_NOT_FOUND),
    (MAX - 1, 0, MAX, bs_errors.ERR_CUMULATIVE_EXCEEDS_BALANCE),
    (DEPOSIT, MAX, MAX, bs_errors.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED),
])
async def test_the_chains_state_is_checked_before_anything_is_held(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor, balance: int,
        claimed: int, voucher: int, reason: str) -> None:
    chain.balance, chain.claimed = balance, claimed
    problem = await refusal(acceptor(chain, ledger, executor), pay(voucher))
    assert problem.reason == reason and ledger.channel(CID) is None


async def test_a_voucher_for_another_signer_or_config_is_refused(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    data = x402wire.decode_json(pay(MAX), "x")
    data["payload"]["voucher"]["signature"] = sign_voucher(
        EthAccountSigner(Account.create()), CID, MAX, NETWORK).signature
    problem = await refusal(acc, x402wire.encode_json(data))
    assert problem.reason == bs_errors.ERR_INVALID_VOUCHER_SIGNATURE
    data = x402wire.decode_json(pay(MAX), "x")
    data["payload"]["channelConfig"]["receiverAuthorizer"] = OTHER
    problem = await refusal(acc, x402wire.encode_json(data))
    assert problem.reason == bs_errors.ERR_CHANNEL_ID_MISMATCH
    assert ledger.channel(CID) is None and chain.reads == 0


async def test_a_top_up_is_seen_at_once_by_a_voucher_above_the_cached_deposit(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    chain.balance = MAX
    acc = acceptor(chain, ledger, executor)
    first = await acc.authorize(pay(MAX), WORST, "r1")  # the state is cached (ttl 60 s)
    acc.charge(first, 3, 5, WORST)
    chain.balance = 10 * MAX  # the payer tops the channel up
    auth = await acc.authorize(pay(WORST + MAX), WORST, "r2")  # above the cached deposit
    assert auth.state is not None and auth.state.balance == 10 * MAX and chain.reads == 2


async def test_the_channel_state_is_read_once_while_fresh(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    first = await acc.authorize(pay(MAX), WORST, "r1")
    acc.charge(first, 3, 5, WORST)
    await acc.authorize(pay(WORST + MAX), WORST, "r2")
    assert chain.reads == 1


# ------------------------------------------------------------------ streams


async def test_running_receipts_quotes_and_release(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    auth = await acc.authorize(pay(MAX), WORST, "r1")
    running = acc.progress(auth, 3, 2, 7_000)
    assert running is not None
    assert (running["success"], running["payer"], running["network"]) == \
        (True, PAYER.address, NETWORK)
    assert running["extra"]["running"] is True and running["extra"]["chargedAmount"] == "7000"
    sent = Receipt.from_json(running["extra"]["receipt"])
    verify_receipt(sent, NODE.address)
    assert (sent.amount, sent.cumulative, sent.tokens_out) == (7_000, 7_000, 2)
    quoted = acc.quote(auth, 3, 100, 10 * MAX)  # capped at the hold's maximum
    assert quoted is not None
    final, response = quoted
    verify_receipt(final, NODE.address)
    assert (final.request_id, final.channel_id, final.tokens_in, final.tokens_out,
            final.amount, final.cumulative, final.chain_id) == ("r1", CID, 3, 100, MAX, MAX,
                                                                CHAIN)
    assert response.extra is not None and response.extra["chargedAmount"] == str(MAX)
    assert ledger.channel(CID).charged == 0  # type: ignore[union-attr]  # quoted, not charged
    # the quoted receipt is charged exactly, and no other
    with pytest.raises(LedgerError, match="no longer matches the receipt sent for it"):
        acc.charge(auth, 3, 100, MAX - 1, quoted=final)
    auth.done = False
    charged, _ = acc.charge(auth, 3, 100, MAX, quoted=final)
    assert charged == final and ledger.channel(CID).charged == MAX  # type: ignore[union-attr]
    assert acc.quote(auth, 3, 1, 1) is None and acc.progress(auth, 3, 1, 1) is None


async def test_a_stream_that_breaks_is_charged_its_last_running_receipt(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    auth = await acc.authorize(pay(MAX), WORST, "r1")
    acc.progress(auth, 3, 2, 7_000)
    kept = acc.release(auth)
    assert kept is not None and (kept.amount, kept.cumulative) == (7_000, 7_000)
    assert auth.done is True and acc.release(auth) is None
    record = ledger.channel(CID)
    assert record is not None and record.charged == 7_000 and record.pending_request is None
    # a request released with no running receipt is charged nothing
    nxt = await acc.authorize(pay(7_000 + MAX), WORST, "r2")
    assert acc.release(nxt) is None
    assert ledger.channel(CID).charged == 7_000  # type: ignore[union-attr]


# ------------------------------------------------------------------ deposits


async def test_a_deposit_goes_on_chain_then_is_taken_as_a_voucher(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    auth = await acc.authorize(pay(MAX, kind="deposit"), WORST, "r1")
    assert auth.settle is chain.settle and chain.reads == 1
    assert [r.amount for r in chain.settled] == [str(MAX)]
    _, response = acc.charge(auth, 3, 5, WORST)
    assert response.transaction == "0xtx" and response.success is True
    assert response.extra is not None and response.extra["chargedAmount"] == str(WORST)


@pytest.mark.parametrize(("verify", "settle", "reason", "says"), [
    (VerifyResponse(is_valid=False, invalid_reason="bad_sig", invalid_message="nope"), None,
     "bad_sig", "deposit refused: bad_sig nope"),
    (VerifyResponse(is_valid=False), None, bs_errors.ERR_DEPOSIT_PAYLOAD, "deposit refused: None"),
    (ValueError("odd field"), None, bs_errors.ERR_DEPOSIT_PAYLOAD,
     "malformed payment payload (verifying the deposit): ValueError: odd field"),
    (None, SettleResponse(success=False, error_reason="reverted", transaction="",
                          network=NETWORK), "reverted", "deposit failed on chain: reverted"),
    (None, SettleResponse(success=False, transaction="", network=NETWORK), "deposit_failed",
     "deposit failed on chain: None"),
    (ChainError("rpc down"), None, "chain_unavailable", "rpc down"),
    (None, OSError("connection\n   reset"), "chain_unavailable",
     "settling the deposit: the chain RPC failed: connection reset"),
])
async def test_a_deposit_that_fails_is_a_402_and_nothing_is_held(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor, verify: Any, settle: Any,
        reason: str, says: str) -> None:
    if verify is not None:
        chain.verify = verify
    if settle is not None:
        chain.settle = settle
    problem = await refusal(acceptor(chain, ledger, executor), pay(MAX, kind="deposit"))
    assert (problem.reason, problem.message) == (reason, says)
    assert ledger.channel(CID) is None and chain.reads == 0


async def test_a_node_without_deposits_says_so(chain: Chain, ledger: SqliteLedger,
                                               executor: ChainExecutor) -> None:
    problem = await refusal(acceptor(chain, ledger, executor, deposits=False),
                            pay(MAX, kind="deposit"))
    assert problem.reason == bs_errors.ERR_DEPOSIT_PAYLOAD
    assert problem.message == "this node takes no deposits with payments: open the channel " \
        "yourself"


# ------------------------------------------------------------------ exact


async def test_an_exact_payment_is_verified_settled_once_and_receipted(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    auth = await acc.authorize(exact_pay(MAX), WORST, "r1")
    assert (auth.scheme, auth.payer, auth.signer, auth.max_amount, auth.hold) == \
        ("exact", PAYER.address, PAYER.address, MAX, None)
    assert isinstance(auth.extra["payment"], PaymentPayload) and chain.settled == []
    assert auth.requirements.scheme == "exact" and auth.requirements.amount == str(MAX)
    assert acc.quote(auth, 3, 5, WORST) is None and acc.progress(auth, 3, 5, WORST) is None
    settled = await acc.settle_exact(auth)
    assert settled is chain.settle and await acc.settle_exact(auth) is settled
    assert len(chain.settled) == 1
    receipt, response = acc.charge(auth, 3, 5, WORST)
    verify_receipt(receipt, NODE.address)
    assert (receipt.request_id, receipt.channel_id, receipt.tokens_in, receipt.tokens_out,
            receipt.amount, receipt.cumulative, receipt.chain_id) == \
        ("r1", NONCE.lower(), 3, 5, MAX, MAX, CHAIN)  # exact moves its fixed amount
    assert response.transaction == "0xtx" and response.extra == {"receipt": receipt.to_json()}
    assert auth.done is True and acc.release(auth) is None
    assert ledger.channel(NONCE.lower()) is None


async def test_an_exact_payment_charged_before_settling_still_gets_a_receipt(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    auth = await acc.authorize(exact_pay(MAX), WORST, "r1")
    receipt, response = acc.charge(auth, 3, 5, WORST)  # settled after the answer
    assert receipt.channel_id == NONCE.lower() and receipt.amount == MAX
    assert (response.success, response.transaction, response.network, response.payer) == \
        (True, "", NETWORK, PAYER.address)
    assert response.extra == {"receipt": receipt.to_json()}


async def test_an_exact_payment_without_a_payer_has_no_signer(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    chain.verify = VerifyResponse(is_valid=True)
    auth = await acceptor(chain, ledger, executor).authorize(exact_pay(), WORST, "r1")
    assert (auth.payer, auth.signer) == ("", "")


@pytest.mark.parametrize(("verify", "reason", "says"), [
    (VerifyResponse(is_valid=False, invalid_reason="expired", invalid_message="too late"),
     "expired", "exact payment refused: expired too late"),
    (VerifyResponse(is_valid=False), "invalid_exact_payment", "exact payment refused: None"),
    (KeyError("value"), "invalid_exact_evm_payload",
     "malformed payment payload (verifying the exact payment): KeyError: 'value'"),
    (OSError(""), "chain_unavailable",
     "verifying the exact payment: the chain RPC failed: OSError"),
])
async def test_an_exact_payment_that_does_not_verify_is_refused(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor, verify: Any, reason: str,
        says: str) -> None:
    chain.verify = verify
    problem = await refusal(acceptor(chain, ledger, executor), exact_pay())
    assert (problem.reason, problem.message) == (reason, says)
    assert chain.settled == []


async def test_an_exact_payment_that_fails_on_chain_is_refused(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    acc = acceptor(chain, ledger, executor)
    for settle, reason in ((SettleResponse(success=False, error_reason="reverted",
                                           transaction="", network=NETWORK), "reverted"),
                           (SettleResponse(success=False, transaction="", network=NETWORK),
                            "settle_failed")):
        chain.settle = settle
        auth = await acc.authorize(exact_pay(), WORST, "r1")
        with pytest.raises(PaymentRequiredError) as info:
            await acc.settle_exact(auth)
        assert info.value.reason == reason
        assert info.value.message == f"exact payment failed on chain: {settle.error_reason}"


async def test_exact_refusals(chain: Chain, ledger: SqliteLedger,
                              executor: ChainExecutor) -> None:
    problem = await refusal(acceptor(chain, ledger, executor, exact=False), exact_pay())
    assert (problem.reason, problem.message) == ("unsupported_scheme",
                                                 "this node does not take exact payments")
    problem = await refusal(acceptor(chain, ledger, executor), exact_pay(nonce="0x1"))
    assert problem.reason == "invalid_exact_evm_payload"
    assert problem.message.startswith("malformed exact payload: authorization.nonce")
    problem = await refusal(acceptor(chain, ledger, executor), exact_pay(WORST - 1))
    assert problem.reason == "insufficient_amount"


def test_an_authorization_starts_open() -> None:
    auth = Authorization(BATCH, "r", "p", 1, TERMS.requirement(BATCH, 1))
    assert (auth.hold, auth.state, auth.settle, auth.extra, auth.done, auth.signer) == \
        (None, None, None, {}, False, "")


# ------------------------------------------------------------------ the chain's time


async def test_a_verification_the_chain_does_not_answer_is_a_prompt_402(
        chain: Chain, ledger: SqliteLedger) -> None:
    executor = ChainExecutor(workers=1, timeout=0.1)
    try:
        chain.delay = 0.5
        problem = await refusal(acceptor(chain, ledger, executor), exact_pay())
        assert problem.reason == "chain_unavailable"
        assert problem.message == ("verifying the exact payment: the chain RPC did not answer "
                                   "within 0.1 s")
        assert chain.settled == []
    finally:
        executor.close()


async def test_a_transaction_once_sent_is_waited_for_past_the_read_deadline(
        chain: Chain, ledger: SqliteLedger) -> None:
    """Settling a deposit or an exact payment moves money: the executor's deadline (for
    reads and verification) never abandons it."""
    executor = ChainExecutor(workers=1, timeout=0.2)
    try:
        acc = acceptor(chain, ledger, executor)
        chain.settle_delay = 0.5
        deposit = await acc.authorize(pay(MAX, kind="deposit"), WORST, "r1")
        assert deposit.settle is chain.settle and len(chain.settled) == 1
        acc.release(deposit)
        exact = await acc.authorize(exact_pay(), WORST, "r2")
        assert (await acc.settle_exact(exact)).success is True
        assert len(chain.settled) == 2
    finally:
        executor.close()


async def test_a_chain_with_every_worker_busy_refuses_at_once_saying_what_waited(
        chain: Chain, ledger: SqliteLedger) -> None:
    import threading

    executor = ChainExecutor(workers=1, timeout=1.0, max_pending=1)
    release = threading.Event()
    try:
        acc = acceptor(chain, ledger, executor)
        auth = await acc.authorize(exact_pay(), WORST, "r1")
        stuck = asyncio.ensure_future(executor.call(lambda: release.wait(5), what="stuck",
                                                    deadline=None))
        await asyncio.sleep(0.05)
        with pytest.raises(PaymentRequiredError) as info:
            await acc.settle_exact(auth)
        assert info.value.reason == "chain_unavailable"
        assert info.value.message == ("settling the exact payment: 1 chain calls are already "
                                      "waiting on the RPC (it is slow or not answering); try "
                                      "again shortly")
        assert chain.settled == [] and auth.settle is None
        release.set()
        await stuck
        assert (await acc.settle_exact(auth)).success is True  # tried again once it answers
    finally:
        release.set()
        executor.close()


async def test_half_configured_settlers_take_no_payment(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    """A node needs both the verifier and the settler of a scheme to take it."""
    from agoranet.payments.accept.verifier import StateCache
    from agoranet.payments.receipts import ReceiptSigner

    cache = StateCache(chain.read, ttl=60.0, executor=executor)
    only_settlers = PaymentAcceptor(TERMS, ledger, cache, ReceiptSigner(bytes(NODE.key)),
                                    deposits=chain.settler, exact=chain.settler)
    problem = await refusal(only_settlers, exact_pay())
    assert (problem.reason, problem.message) == ("unsupported_scheme",
                                                 "this node does not take exact payments")
    problem = await refusal(only_settlers, pay(MAX, kind="deposit"))
    assert (problem.reason, problem.message) == (
        bs_errors.ERR_DEPOSIT_PAYLOAD,
        "this node takes no deposits with payments: open the channel yourself")
    assert chain.settled == []


async def test_a_long_rpc_error_is_cut_to_200_characters(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor) -> None:
    chain.verify = OSError("x" * 300)
    problem = await refusal(acceptor(chain, ledger, executor), exact_pay())
    assert problem.message == "verifying the exact payment: the chain RPC failed: " + "x" * 200
    chain.verify = ValueError("y" * 400)  # a malformed payload's error: the whole message
    problem = await refusal(acceptor(chain, ledger, executor), exact_pay())
    prefix = "malformed payment payload (verifying the exact payment): ValueError: "
    assert problem.message == (prefix + "y" * 400)[:300]


async def test_a_malformed_payload_the_sdk_trips_on_is_logged_with_its_error(
        chain: Chain, ledger: SqliteLedger, executor: ChainExecutor,
        caplog: pytest.LogCaptureFixture) -> None:
    chain.verify = ValueError("odd field")
    with caplog.at_level(logging.INFO, logger="agoranet.payments.accept.acceptor"):
        await refusal(acceptor(chain, ledger, executor), pay(MAX, kind="deposit"))
    assert [r.getMessage() for r in caplog.records] == [
        "verifying the deposit: malformed payload (ValueError: odd field)"]
