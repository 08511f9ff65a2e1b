"""The node's voucher check and the escrow's claim agree (#12).

For random valid and mutated vouchers (signature malleability, ``v`` values,
foreign keys, amounts around the deposit and what is already claimed, channel
configs), the node's check (:mod:`agoranet.payments.accept.verifier`: config,
signature, on-chain state) is run next to the real ``BatchSettlement`` claim
the node's settler would send (``claimWithSignature``, signed by the node's
receiver authorizer) on titanoboa. The invariant: every voucher the node
accepts is paid to the node by the claim. Conversely every voucher the claim
pays the node is accepted, except where the node is stricter on purpose
(:data:`POLICY`: a withdraw delay other than its terms, a pending withdrawal,
no EOA payer authorizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.schemas import PaymentRequirements

from agoranet.chain import compile_contract
from agoranet.errors import PaymentRequiredError
from agoranet.payments.accept.verifier import (
    OnchainState,
    check_state,
    check_voucher,
    parse_voucher,
)
from agoranet.payments.ecdsa import SECP256K1_N, canonical_signature

from .helpers import (
    AUTH,
    DELAY,
    OTHER,
    PAYER,
    RECEIVER,
    ZERO,
    Channel,
    Claim,
    System,
    deploy,
    fund_and_deposit,
    sign_batch_sdk,
    sign_voucher_sdk,
)

SIGNATURES = ("canonical", "high_s", "v_0_1", "v_other", "high_s_same_v", "other_key",
              "other_amount", "other_channel", "short", "long", "r_zero", "s_zero", "bit_flip")
CONFIGS = ("ours", "other_receiver", "other_token", "other_receiver_authorizer",
           "other_withdraw_delay", "no_payer_authorizer", "withdrawing", "unfunded")
# The node refuses these though the escrow would pay it: its terms, not claimability.
POLICY = frozenset({"other_withdraw_delay", "no_payer_authorizer", "withdrawing"})
CONFIG_REASONS = {
    "other_receiver": bs_errors.ERR_RECEIVER_MISMATCH,
    "other_token": bs_errors.ERR_TOKEN_MISMATCH,
    "other_receiver_authorizer": bs_errors.ERR_RECEIVER_AUTHORIZER_MISMATCH,
    "other_withdraw_delay": bs_errors.ERR_WITHDRAW_DELAY_MISMATCH,
    "no_payer_authorizer": bs_errors.ERR_INVALID_VOUCHER_SIGNATURE,
    "withdrawing": "invalid_batch_settlement_evm_channel_withdrawing",
    "unfunded": bs_errors.ERR_CHANNEL_NOT_FOUND,
}


@dataclass
class World:
    system: System
    other_token: System  # the same escrow and collector, another ERC-3009 token


@pytest.fixture(scope="module")
def world(_module_system: System) -> World:
    system = _module_system
    token = deploy(compile_contract("Stablecoin"), sender=system.minter)
    return World(system, System(token=token, escrow=system.escrow, collector=system.collector,
                                minter=system.minter))


def requirements(system: System) -> PaymentRequirements:
    """The node's terms: paid to RECEIVER, claims authorized by AUTH, DELAY, this token."""
    return PaymentRequirements(
        scheme="batch-settlement", network=f"eip155:{system.chain_id}",
        asset=str(system.token.address), amount="1", pay_to=RECEIVER.address,
        max_timeout_seconds=3600,
        extra={"receiverAuthorizer": AUTH.address, "withdrawDelay": DELAY})


def onchain(system: System, channel_id: bytes) -> OnchainState:
    balance, claimed = system.escrow.channels(channel_id)
    _, requested_at = system.escrow.pendingWithdrawals(channel_id)
    return OnchainState(int(balance), int(claimed), int(requested_at),
                        int(system.escrow.refundNonce(channel_id)), 0.0)


def node_verdict(system: System, channel: Channel, amount: int, signature: bytes) -> str | None:
    """None if the node accepts the voucher, else the x402 reason of its 402."""
    cid = channel.channel_id(system.chain_id)
    payload: dict[str, Any] = {
        "type": "voucher", "channelConfig": channel.sdk.to_dict(),
        "voucher": {"channelId": "0x" + cid.hex(), "maxClaimableAmount": str(amount),
                    "signature": "0x" + signature.hex()}}
    try:
        voucher = parse_voucher(payload)
        check_voucher(voucher, requirements(system), system.chain_id)
        check_state(voucher, onchain(system, cid))
    except PaymentRequiredError as exc:
        return exc.reason
    return None


def escrow_pays_node(system: System, channel: Channel, amount: int, signature: bytes) -> bool:
    """Does the node's claim of ``amount`` (its charged total) move ``amount`` minus what was
    claimed before to the node (RECEIVER, in the node's token)? Rolled back afterwards."""
    cid = channel.channel_id(system.chain_id)
    if len(signature) > 256 or not 0 < amount < 2**128:
        return False  # not even encodable as a claim
    claim = Claim(channel, amount, signature, amount)
    with boa.env.anchor():
        before = int(system.escrow.receivers(RECEIVER.address, system.token.address)[0])
        prior = int(system.escrow.channels(cid)[1])
        try:
            system.escrow.claimWithSignature(
                [claim.tuple], sign_batch_sdk(AUTH, [claim], system.chain_id))
        except boa.BoaError:
            return False
        after = int(system.escrow.receivers(RECEIVER.address, system.token.address)[0])
        return after - before == amount - prior > 0


def make_channel(world: World, kind: str, deposit: int) -> Channel:
    system = world.system
    token = world.other_token if kind == "other_token" else system
    channel = Channel.make(
        PAYER.address,
        OTHER.address if kind == "other_receiver" else RECEIVER.address,
        OTHER.address if kind == "other_receiver_authorizer" else AUTH.address,
        str(token.token.address),
        payer_authorizer=ZERO if kind == "no_payer_authorizer" else PAYER.address,
        withdraw_delay=DELAY + 60 if kind == "other_withdraw_delay" else DELAY)
    if kind != "unfunded":
        fund_and_deposit(token, PAYER, channel, deposit)
    return channel


def mutate(world: World, channel: Channel, amount: int, how: str, bit: int) -> bytes:
    chain_id = world.system.chain_id
    good = sign_voucher_sdk(PAYER, channel, amount, chain_id)
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    high = (SECP256K1_N - s).to_bytes(32, "big")
    if how == "canonical":
        return good
    if how == "high_s":  # the malleable twin: recovers PAYER too
        return r + high + bytes([55 - v])
    if how == "v_0_1":
        return good[:64] + bytes([v - 27])
    if how == "v_other":
        return good[:64] + bytes([(29, 0, 1, 255)[bit % 4]])
    if how == "high_s_same_v":
        return r + high + bytes([v])
    if how == "other_key":
        return sign_voucher_sdk(OTHER, channel, amount, chain_id)
    if how == "other_amount":
        return sign_voucher_sdk(PAYER, channel, amount + 1, chain_id)
    if how == "other_channel":
        twin = Channel.make(PAYER.address, RECEIVER.address, AUTH.address,
                            str(world.system.token.address), payer_authorizer=PAYER.address)
        return sign_voucher_sdk(PAYER, twin, amount, chain_id)
    if how == "short":
        return good[:64]
    if how == "long":
        return good + b"\0"
    if how == "r_zero":
        return b"\0" * 32 + good[32:]
    if how == "s_zero":
        return r + b"\0" * 32 + bytes([v])
    assert how == "bit_flip"
    flipped = bytearray(good)
    flipped[bit // 8 % 64] ^= 1 << (bit % 8)
    return bytes(flipped)


@given(deposit=st.integers(1, 10**9), claimed_part=st.integers(0, 3),
       amount_pick=st.sampled_from(("claimed", "claimed+1", "deposit", "deposit+1", "any")),
       any_amount=st.integers(1, 2 * 10**9), signature=st.sampled_from(SIGNATURES),
       config=st.sampled_from(CONFIGS), bit=st.integers(0, 511))
def test_the_node_accepts_exactly_what_the_escrow_pays_it(
        world: World, deposit: int, claimed_part: int, amount_pick: str, any_amount: int,
        signature: str, config: str, bit: int) -> None:
    system = world.system
    with boa.env.anchor():
        channel = make_channel(world, config, deposit)
        cid = channel.channel_id(system.chain_id)
        claimed = deposit * claimed_part // 4 if config != "unfunded" else 0
        if claimed:  # the node claimed part of the channel before
            done = Claim(channel, claimed, sign_voucher_sdk(PAYER, channel, claimed,
                                                            system.chain_id), claimed)
            system.escrow.claim([done.tuple], sender=done.channel.sdk.receiver)
        if config == "withdrawing":
            system.escrow.initiateWithdraw(channel.tuple, deposit - claimed,
                                           sender=PAYER.address)
        amount = {"claimed": claimed, "claimed+1": claimed + 1, "deposit": deposit,
                  "deposit+1": deposit + 1, "any": any_amount}[amount_pick]
        amount = max(amount, 1)
        sig = mutate(world, channel, amount, signature, bit)
        refusal = node_verdict(system, channel, amount, sig)
        pays = escrow_pays_node(system, channel, amount, sig)
        facts = (config, signature, amount_pick, amount, claimed, deposit, refusal, pays)
        if refusal is None:  # every voucher the node accepts is paid on chain
            assert pays, facts
            assert onchain(system, cid).total_claimed < amount <= deposit
        elif config not in POLICY:  # and every voucher the escrow pays the node is accepted
            assert not pays, facts
        # each refusal for its own reason (config checks come first, then the signature,
        # then the channel's state)
        if config in CONFIG_REASONS and (signature == "canonical" or config not in
                                         ("withdrawing", "unfunded")):
            assert refusal == CONFIG_REASONS[config], facts
        elif signature != "canonical":
            assert refusal == bs_errors.ERR_INVALID_VOUCHER_SIGNATURE, facts
        elif amount <= claimed:
            assert refusal == bs_errors.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED, facts
        elif amount > deposit:
            assert refusal == bs_errors.ERR_CUMULATIVE_EXCEEDS_BALANCE, facts
        else:
            assert refusal is None, facts


def test_a_high_s_twin_is_refused_by_both_and_its_canonical_form_by_neither(
        world: World) -> None:
    """The #12 attack itself: a valid voucher's malleable twins are refused by the node (the
    escrow would revert their claim); the canonical form of a twin is the original."""
    system = world.system
    with boa.env.anchor():
        channel = make_channel(world, "ours", 1_000)
        good = sign_voucher_sdk(PAYER, channel, 700, system.chain_id)
        assert node_verdict(system, channel, 700, good) is None
        assert escrow_pays_node(system, channel, 700, good)
        for how in ("high_s", "v_0_1"):
            twin = mutate(world, channel, 700, how, 0)
            assert not escrow_pays_node(system, channel, 700, twin)
            assert node_verdict(system, channel, 700, twin) == \
                bs_errors.ERR_INVALID_VOUCHER_SIGNATURE
            assert canonical_signature(twin) == good
