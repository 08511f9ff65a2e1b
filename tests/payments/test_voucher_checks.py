"""The node's voucher checks one by one, each refusal with its x402 reason (no chain: logic).

Parsing, the channel config against the node's terms, the payer's signature, the on-chain
state rules and the caches in front of them. The same refusals through a paid node on the
real dev chain, on funded channels, are in test_paid_node.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentRequirements

from agoranet.chain.executor import ChainExecutor
from agoranet.errors import ChainError, PaymentRequiredError
from agoranet.payments.accept.ledger import MAX_AMOUNT
from agoranet.payments.accept.verifier import (
    ZERO_ADDRESS,
    ConfigCache,
    OnchainState,
    StateCache,
    Voucher,
    check_config,
    check_signature,
    check_state,
    check_voucher,
    parse_voucher,
)
from agoranet.payments.vouchers import voucher_digest

pytestmark = pytest.mark.timeout(30)

CHAIN = 31337
PAYER: LocalAccount = Account.create()
NODE = Account.create().address
TOKEN = Account.create().address
OTHER = Account.create().address


def config(**overrides: Any) -> ChannelConfig:
    fields = {"payer": PAYER.address, "payerAuthorizer": PAYER.address, "receiver": NODE,
              "receiverAuthorizer": NODE, "token": TOKEN, "withdrawDelay": 900,
              "salt": "0x" + "00" * 32, **overrides}
    return ChannelConfig.from_dict(fields)


def terms(**extra: Any) -> PaymentRequirements:
    """The node's batch-settlement requirement (as PaymentTerms builds it)."""
    return PaymentRequirements(
        scheme="batch-settlement", network=f"eip155:{CHAIN}", asset=TOKEN, amount="100",
        pay_to=NODE, max_timeout_seconds=3600,
        extra={"receiverAuthorizer": NODE, "withdrawDelay": 900, **extra})


def payload(amount: int | str = 500, *, cfg: ChannelConfig | None = None,
            key: LocalAccount = PAYER, chain: int = CHAIN, kind: str = "voucher",
            channel_id: str | None = None) -> dict[str, Any]:
    cfg = cfg or config()
    cid = channel_id or compute_channel_id(cfg, CHAIN)
    signed = sign_voucher(EthAccountSigner(key), cid, int(amount), f"eip155:{chain}")
    voucher = {**signed.to_dict(), "maxClaimableAmount": amount}
    return {"type": kind, "channelConfig": cfg.to_dict(), "voucher": voucher}


def refusal(fn: Any, *args: Any) -> PaymentRequiredError:
    with pytest.raises(PaymentRequiredError) as info:
        fn(*args)
    return info.value


# ------------------------------------------------------------------ parsing


def test_a_voucher_payload_parses_to_its_fields() -> None:
    raw = payload(500)
    cid = compute_channel_id(config(), CHAIN)
    raw["voucher"]["channelId"] = cid.upper().replace("0X", "0x")
    voucher = parse_voucher(raw)
    assert (voucher.kind, voucher.channel_id, voucher.amount) == ("voucher", cid.lower(), 500)
    assert voucher.config == config() and voucher.raw is raw
    assert voucher.signature == raw["voucher"]["signature"]
    assert parse_voucher(payload(7, kind="deposit")).kind == "deposit"


@pytest.mark.parametrize("kind", [None, "refund", "claim", "Voucher"])
def test_only_vouchers_and_deposits_are_taken(kind: str | None) -> None:
    raw = payload()
    raw["type"] = kind
    problem = refusal(parse_voucher, raw)
    assert problem.reason == bs_errors.ERR_INVALID_PAYLOAD_TYPE
    assert problem.message == (f"batch-settlement payload type {kind!r} is not accepted here "
                               "(send a voucher or a deposit)")


def _without(field: str) -> dict[str, Any]:
    raw = payload()
    del raw["voucher"][field]
    return raw


@pytest.mark.parametrize(("raw", "names"), [
    ({"type": "voucher", "channelConfig": config().to_dict()}, "'voucher'"),
    ({**payload(), "voucher": ["not", "an", "object"]}, "voucher is not an object"),
    ({**payload(), "channelConfig": None}, "channelConfig is not an object"),
    (_without("maxClaimableAmount"), "voucher.maxClaimableAmount is not a decimal integer"),
    (_without("channelId"), "voucher.channelId is not 0x-prefixed hex of 32 bytes"),
    (_without("signature"), "voucher.signature is not 0x-prefixed hex of bytes"),
    ({**payload(), "voucher": {**payload()["voucher"], "channelId": "0x" + "ab" * 31}},
     "voucher.channelId is not 0x-prefixed hex of 32 bytes"),
    ({**payload(), "voucher": {**payload()["voucher"], "maxClaimableAmount": str(2**128)}},
     "voucher.maxClaimableAmount is out of range for a uint128"),
])
def test_a_malformed_voucher_is_refused_naming_the_field(raw: dict[str, Any],
                                                         names: str) -> None:
    problem = refusal(parse_voucher, raw)
    assert problem.reason == bs_errors.ERR_VOUCHER_PAYLOAD
    assert problem.message == f"malformed voucher payload: {names}"


def test_voucher_amounts_are_one_up_to_what_the_ledger_holds() -> None:
    assert parse_voucher(payload(1)).amount == 1
    assert parse_voucher(payload(MAX_AMOUNT)).amount == MAX_AMOUNT
    for amount in (0, MAX_AMOUNT + 1):
        problem = refusal(parse_voucher, payload(amount))
        assert problem.reason == bs_errors.ERR_VOUCHER_PAYLOAD
        assert problem.message == f"voucher amount {amount} is out of range"


# ------------------------------------------------------------------ channel config


def test_a_config_for_this_node_passes() -> None:
    check_config(parse_voucher(payload()), terms(), CHAIN)
    check_voucher(parse_voucher(payload()), terms(), CHAIN)


def test_a_channel_id_of_another_chain_or_config_is_refused() -> None:
    other_chain = compute_channel_id(config(), CHAIN + 1)
    for cid in (other_chain, compute_channel_id(config(salt="0x" + "11" * 32), CHAIN)):
        problem = refusal(check_config, parse_voucher(payload(channel_id=cid)), terms(), CHAIN)
        assert problem.reason == bs_errors.ERR_CHANNEL_ID_MISMATCH
        assert "not the hash of its channel config on this chain" in problem.message
    # the same voucher is fine on the chain its id was computed for
    on_other_chain = terms().model_copy(update={"network": f"eip155:{CHAIN + 1}"})
    check_config(parse_voucher(payload(channel_id=other_chain)), on_other_chain, CHAIN + 1)


@pytest.mark.parametrize(("cfg", "reason", "says"), [
    (config(receiver=OTHER), bs_errors.ERR_RECEIVER_MISMATCH,
     f"the channel pays {OTHER}, not this node ({NODE})"),
    (config(token=OTHER), bs_errors.ERR_TOKEN_MISMATCH,
     f"the channel's token {OTHER} is not {TOKEN}"),
    (config(receiverAuthorizer=OTHER), bs_errors.ERR_RECEIVER_AUTHORIZER_MISMATCH,
     "the channel's receiver authorizer is not this node's"),
    (config(withdrawDelay=901), bs_errors.ERR_WITHDRAW_DELAY_MISMATCH,
     "the channel config does not fit this node "
     f"({bs_errors.ERR_WITHDRAW_DELAY_MISMATCH})"),
    (config(payerAuthorizer=ZERO_ADDRESS), bs_errors.ERR_INVALID_VOUCHER_SIGNATURE,
     "vouchers must be signed by an EOA payerAuthorizer (EIP-1271 payers are not accepted "
     "by this node)"),
])
def test_a_config_that_does_not_fit_this_node_is_refused(cfg: ChannelConfig, reason: str,
                                                         says: str) -> None:
    problem = refusal(check_config, parse_voucher(payload(cfg=cfg)), terms(), CHAIN)
    assert (problem.reason, problem.message) == (reason, says)
    assert refusal(check_voucher, parse_voucher(payload(cfg=cfg)), terms(), CHAIN).reason \
        == reason


def test_the_config_cache_remembers_a_pair_that_passed_and_nothing_else() -> None:
    cache = ConfigCache(limit=1)
    good = parse_voucher(payload())
    cache.check(good, terms(), CHAIN)
    # remembered: the same (id, config) is not checked again (terms() here would refuse it)
    cache.check(good, terms(receiverAuthorizer=OTHER), CHAIN)
    # the same channel id with another config is checked afresh, and refused
    forged = parse_voucher({**payload(), "channelConfig": config(receiver=OTHER).to_dict()})
    assert refusal(cache.check, forged, terms(), CHAIN).reason == bs_errors.ERR_CHANNEL_ID_MISMATCH
    cache.check(good, terms(receiverAuthorizer=OTHER), CHAIN)  # still remembered
    # a refused pair is not remembered
    wrong_receiver = parse_voucher(payload(cfg=config(receiver=OTHER)))
    for _ in range(2):
        assert refusal(cache.check, wrong_receiver, terms(), CHAIN).reason \
            == bs_errors.ERR_RECEIVER_MISMATCH
    # full at ``limit``: a new pair clears the old ones, which are then checked again
    second = parse_voucher(payload(cfg=config(salt="0x" + "22" * 32)))
    cache.check(second, terms(), CHAIN)
    problem = refusal(cache.check, good, terms(receiverAuthorizer=OTHER), CHAIN)
    assert problem.reason == bs_errors.ERR_RECEIVER_AUTHORIZER_MISMATCH
    assert ConfigCache().limit == 100_000


# ------------------------------------------------------------------ signature


def test_a_voucher_signed_by_the_payer_authorizer_passes_and_no_other() -> None:
    check_signature(parse_voucher(payload(123)), CHAIN)
    for raw in (payload(123, key=Account.create()), payload(123, chain=CHAIN + 1)):
        problem = refusal(check_signature, parse_voucher(raw), CHAIN)
        assert problem.reason == bs_errors.ERR_INVALID_VOUCHER_SIGNATURE
        assert problem.message == ("the voucher is not signed by the channel's payer "
                                   f"authorizer {PAYER.address}")
    # signed for another amount than it claims
    raw = payload(123)
    raw["voucher"]["maxClaimableAmount"] = "124"
    assert refusal(check_signature, parse_voucher(raw), CHAIN).reason \
        == bs_errors.ERR_INVALID_VOUCHER_SIGNATURE
    # check_voucher checks the signature on the node's chain, not the voucher's
    problem = refusal(check_voucher, parse_voucher(payload(123, chain=CHAIN + 1)), terms(), CHAIN)
    assert problem.reason == bs_errors.ERR_INVALID_VOUCHER_SIGNATURE


def test_a_signature_that_is_not_hex_is_refused_as_not_the_escrows() -> None:
    voucher = parse_voucher(payload())
    bad = Voucher(voucher.kind, voucher.channel_id, voucher.config, voucher.amount, "0xzz", {})
    problem = refusal(check_signature, bad, CHAIN)
    assert problem.reason == bs_errors.ERR_INVALID_VOUCHER_SIGNATURE
    assert problem.message == ("the voucher's signature is not one the escrow contract "
                               "accepts: a signature is 65 bytes, not 0; sign with a standard "
                               "Ethereum wallet (low s, v 27 or 28)")


def test_the_voucher_digest_takes_only_a_bytes32_id_and_a_uint128() -> None:
    cid = "0x" + "ab" * 32
    assert len(voucher_digest(cid, 0, CHAIN)) == 32
    assert voucher_digest(cid, 2**128 - 1, CHAIN) != voucher_digest(cid, 2**128 - 2, CHAIN)
    assert voucher_digest(cid, 5, CHAIN) == voucher_digest(cid.removeprefix("0x"), 5, CHAIN)
    for bad_cid, amount in ((cid[:-2], 5), (cid + "00", 5), (cid, -1), (cid, 2**128)):
        with pytest.raises(ValueError,
                           match=r"^channel id must be 32 bytes and the amount a uint128$"):
            voucher_digest(bad_cid, amount, CHAIN)


# ------------------------------------------------------------------ on-chain state


def state(balance: int = 1_000, claimed: int = 100, withdraw_at: int = 0) -> OnchainState:
    return OnchainState(balance, claimed, withdraw_at, 3, 0.0)


@pytest.mark.parametrize(("amount", "onchain", "reason", "says"), [
    (500, state(balance=0, claimed=0), bs_errors.ERR_CHANNEL_NOT_FOUND,
     "the channel holds no deposit (never funded, or closed)"),
    (500, state(withdraw_at=1), "invalid_batch_settlement_evm_channel_withdrawing",
     "the channel has a pending withdrawal: it takes no new vouchers"),
    (1_001, state(), bs_errors.ERR_CUMULATIVE_EXCEEDS_BALANCE,
     "voucher for 1001 exceeds the channel's deposit (1000): top the channel up"),
    (100, state(), bs_errors.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED,
     "voucher for 100 is not above what was already claimed (100)"),
    (99, state(), bs_errors.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED,
     "voucher for 99 is not above what was already claimed (100)"),
])
def test_state_refusals(amount: int, onchain: OnchainState, reason: str, says: str) -> None:
    problem = refusal(check_state, parse_voucher(payload(amount)), onchain)
    assert (problem.reason, problem.message) == (reason, says)


def test_a_voucher_above_the_claims_and_within_the_deposit_passes() -> None:
    check_state(parse_voucher(payload(101)), state())
    check_state(parse_voucher(payload(1_000)), state())
    check_state(parse_voucher(payload(1)), state(balance=1, claimed=0))


def test_the_state_snapshot_mirrors_the_chain() -> None:
    assert OnchainState(7, 5, 9, 2, 1.0).snapshot("0xcid") == {
        "channelId": "0xcid", "balance": "7", "totalClaimed": "5", "withdrawRequestedAt": 9,
        "refundNonce": "2"}


# ------------------------------------------------------------------ state cache


class Reader:
    def __init__(self, clock: Any = time) -> None:
        self.clock = clock
        self.calls: list[str] = []
        self.balance = 1_000
        self.fail = False

    def __call__(self, channel_id: str) -> OnchainState:
        self.calls.append(channel_id)
        if self.fail:
            raise ChainError("connection refused")
        return OnchainState(self.balance, 0, 0, 0, self.clock.monotonic())


async def test_the_state_cache_reads_a_channel_once_within_its_ttl() -> None:
    reader = Reader()
    executor = ChainExecutor(workers=1, timeout=0.5)
    try:
        cache = StateCache(reader, ttl=60.0, executor=executor)
        assert cache.retry_after == 0.5 and cache.max_stale == 300.0
        assert cache.max_entries == 100_000 and cache.ttl == 60.0
        first = await cache.get("a", need=1_000)
        assert await cache.get("a", need=1_000) is first and await cache.get("a") is first
        assert reader.calls == ["a"] and cache.cached("a") is first and len(cache) == 1
        reader.balance = 2_000  # a top-up: a voucher above the cached balance reads again
        assert (await cache.get("a", need=1_001)).balance == 2_000
        assert (await cache.refresh("a")).balance == 2_000  # a refresh always reads
        assert reader.calls == ["a", "a", "a"]
        assert cache.cached("b") is None
    finally:
        executor.close()


async def test_the_state_cache_keeps_the_most_recently_used_channels() -> None:
    reader = Reader()
    executor = ChainExecutor(workers=1, timeout=0.5)
    try:
        cache = StateCache(reader, ttl=60.0, executor=executor, max_entries=2)
        await cache.get("a")
        await cache.get("b")
        await cache.get("a")  # used: "b" is now the oldest
        await cache.get("c")
        assert len(cache) == 2 and cache.cached("b") is None
        assert cache.cached("a") is not None and cache.cached("c") is not None
        await cache.get("a")
        assert reader.calls == ["a", "b", "c"]
    finally:
        executor.close()


async def test_after_a_failed_read_the_chain_is_left_alone_and_the_refusal_says_why() -> None:
    reader = Reader()
    executor = ChainExecutor(workers=1, timeout=0.5)
    try:
        cache = StateCache(reader, ttl=0.0, executor=executor, retry_after=60.0)
        reader.fail = True
        with pytest.raises(PaymentRequiredError) as info:
            await cache.get("a")
        assert info.value.reason == bs_errors.ERR_CHANNEL_STATE_READ_FAILED
        assert info.value.message == ("cannot read the channel's on-chain state: connection "
                                      "refused")
        with pytest.raises(PaymentRequiredError) as again:
            await cache.get("b")
        assert again.value.reason == bs_errors.ERR_CHANNEL_STATE_READ_FAILED
        assert again.value.message.startswith("cannot read the channel's on-chain state: "
                                              "connection refused (retrying in ")
        assert again.value.message.endswith(" s; try again shortly)")
        assert reader.calls == ["a"]
        reader.fail = False
        assert (await cache.refresh("b")).balance == 1_000  # forced through the back-off
        assert (await cache.get("c")).balance == 1_000  # ... which a good read ends
        assert reader.calls == ["a", "b", "c"]
    finally:
        executor.close()


class Clock:
    """A monotonic clock the test moves (the cache's own; nothing else is affected)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from agoranet.payments.accept import verifier

    fake = Clock(0.5)  # a monotonic clock may start anywhere, near zero too
    monkeypatch.setattr(verifier, "time", fake)
    return fake


async def test_the_cache_bounds_are_inclusive(clock: Clock) -> None:
    """State exactly ``ttl`` old is fresh, exactly ``max_stale`` old still serves, and a
    back-off of ``retry_after`` seconds ends exactly then; no refusal before any failure."""
    reader = Reader(clock)
    executor = ChainExecutor(workers=1, timeout=0.5)
    try:
        cache = StateCache(reader, ttl=2.0, executor=executor, max_stale=5.0, retry_after=3.0)
        first = await cache.get("a")  # read at 0.5: nothing failed yet, the chain is asked
        await cache.get("c")  # ... and after a good read it is asked again at once
        clock.now = 2.5
        assert await cache.get("a") is first and reader.calls == ["a", "c"]  # exactly ttl old
        clock.now = 5.5
        reader.fail = True
        assert await cache.get("a") is first  # exactly max_stale old: still served
        assert reader.calls == ["a", "c", "a"]
        with pytest.raises(PaymentRequiredError) as info:
            await cache.get("b")  # within the back-off: refused without a read
        assert info.value.message == ("cannot read the channel's on-chain state: connection "
                                      "refused (retrying in 3.0 s; try again shortly)")
        clock.now = 8.5  # the back-off is over: read again
        reader.fail = False
        assert (await cache.get("b")).balance == 1_000
        assert reader.calls == ["a", "c", "a", "b"]
        clock.now = 8.6
        reader.fail = True
        with pytest.raises(PaymentRequiredError):
            await cache.get("a")  # 8.1 s old: past max_stale
    finally:
        executor.close()


async def test_a_read_past_its_deadline_names_the_channel() -> None:
    import threading

    release = threading.Event()

    def frozen(channel_id: str) -> OnchainState:
        release.wait(5)
        return OnchainState(1, 0, 0, 0, time.monotonic())

    executor = ChainExecutor(workers=1, timeout=0.1)
    try:
        cache = StateCache(frozen, ttl=1.0, executor=executor)
        cid = "0x" + "ab" * 32
        with pytest.raises(PaymentRequiredError) as info:
            await cache.get(cid)
        assert info.value.reason == bs_errors.ERR_CHANNEL_STATE_READ_FAILED
        assert "state: reading channel 0xabababab…: the chain RPC" in info.value.message
    finally:
        release.set()
        executor.close()


def test_a_chain_that_does_not_answer_is_a_chain_error_naming_the_channel() -> None:
    from web3 import Web3

    from agoranet.chain.addresses import ChainAddresses
    from agoranet.node.launcher import free_port
    from agoranet.payments.accept.verifier import Web3StateReader

    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{free_port()}",
                                request_kwargs={"timeout": 2}))
    addresses = ChainAddresses(CHAIN, TOKEN, OTHER, OTHER, None, None, None)
    cid = "0x" + "cd" * 32
    with pytest.raises(ChainError, match=f"^cannot read channel {cid}: "):
        Web3StateReader(w3, addresses)(cid)
