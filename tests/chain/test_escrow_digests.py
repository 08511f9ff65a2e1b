"""EIP-712 ids and digests of the escrow equal the x402 SDK's."""

from __future__ import annotations

import boa
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    CHANNEL_CONFIG_TYPEHASH,
    CLAIM_BATCH_TYPES,
    MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY,
    REFUND_TYPES,
    VOUCHER_TYPES,
)
from x402.mechanisms.evm.batch_settlement.utils import get_batch_settlement_eip712_domain

from agoranet.chain import compile_contract

from .helpers import (
    Channel,
    System,
    account,
    deploy,
    sign_batch_sdk,
    sign_refund_sdk,
    voucher_claim,
)

PAYER, RECEIVER, AUTH = account("payer"), account("receiver"), account("auth")


def _digest(types: dict, message: dict, chain_id: int) -> bytes:
    signable = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(chain_id),
        message_types=types,
        message_data=message,
    )
    return keccak(b"\x19\x01" + signable.header + signable.body)


def _channel(system: System, **kw: object) -> Channel:
    return Channel.make(
        PAYER.address, RECEIVER.address, AUTH.address, str(system.token.address), **kw
    )  # type: ignore[arg-type]


def test_constants(system: System) -> None:
    e = system.escrow
    assert e.MIN_WITHDRAW_DELAY() == MIN_WITHDRAW_DELAY
    assert e.MAX_WITHDRAW_DELAY() == MAX_WITHDRAW_DELAY
    assert e.CHANNEL_CONFIG_TYPEHASH() == CHANNEL_CONFIG_TYPEHASH
    assert e.VOUCHER_TYPEHASH() == keccak(
        text="Voucher(bytes32 channelId,uint128 maxClaimableAmount)"
    )


def test_channel_id_matches_sdk(system: System) -> None:
    for kw in ({}, {"payer_authorizer": PAYER.address}, {"withdraw_delay": MAX_WITHDRAW_DELAY}):
        ch = _channel(system, **kw)
        assert system.escrow.getChannelId(ch.tuple) == ch.channel_id(system.chain_id)


def test_domain(system: System) -> None:
    fields, name, version, chain_id, contract, _, _ = system.escrow.eip712Domain()
    assert (fields, name, version, chain_id) == (
        b"\x0f",
        "x402 Batch Settlement",
        "1",
        system.chain_id,
    )
    assert contract == BATCH_SETTLEMENT_ADDRESS
    signable = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(system.chain_id),
        message_types=VOUCHER_TYPES,
        message_data={"channelId": b"\0" * 32, "maxClaimableAmount": 0},
    )
    assert system.escrow.DOMAIN_SEPARATOR() == signable.header


def test_domain_follows_the_code_address(system: System) -> None:
    """Same runtime code elsewhere gives a different id: the domain is not cached."""
    other = deploy(compile_contract("BatchSettlement"))
    ch = _channel(system)
    assert other.getChannelId(ch.tuple) != system.escrow.getChannelId(ch.tuple)
    assert other.eip712Domain()[4] == other.address


def test_voucher_digest(system: System) -> None:
    cid = _channel(system).channel_id(system.chain_id)
    for amount in (0, 1, 2**128 - 1):
        expected = _digest(
            VOUCHER_TYPES, {"channelId": cid, "maxClaimableAmount": amount}, system.chain_id
        )
        assert system.escrow.getVoucherDigest(cid, amount) == expected


def test_refund_digest_and_sdk_signature(system: System) -> None:
    ch = _channel(system)
    cid = ch.channel_id(system.chain_id)
    digest = system.escrow.getRefundDigest(cid, 7, 1234)
    assert digest == _digest(
        REFUND_TYPES, {"channelId": cid, "nonce": 7, "amount": 1234}, system.chain_id
    )
    sig = sign_refund_sdk(AUTH, ch, 1234, 7, system.chain_id)
    from eth_account import Account

    assert Account._recover_hash(digest, signature=sig) == AUTH.address


def test_claim_batch_digest(system: System) -> None:
    chain_id = system.chain_id
    claims = [
        voucher_claim(PAYER, _channel(system), 100 * (i + 1), 50 * i, chain_id) for i in range(3)
    ]
    entries = [
        {
            "channelId": c.channel.channel_id(chain_id),
            "maxClaimableAmount": c.max_claimable,
            "totalClaimed": c.total_claimed,
        }
        for c in claims
    ]
    digest = system.escrow.getClaimBatchDigest([c.tuple for c in claims])
    assert digest == _digest(CLAIM_BATCH_TYPES, {"claims": entries}, chain_id)
    from eth_account import Account

    assert (
        Account._recover_hash(digest, signature=sign_batch_sdk(AUTH, claims, chain_id))
        == AUTH.address
    )
    assert system.escrow.getClaimBatchDigest([]) == _digest(
        CLAIM_BATCH_TYPES, {"claims": []}, chain_id
    )


def test_chain_id_is_read_at_call_time(system: System) -> None:
    ch = _channel(system)
    before = system.escrow.getChannelId(ch.tuple)
    old = boa.env.evm.patch.chain_id
    try:
        boa.env.evm.patch.chain_id = 31337
        assert system.escrow.getChannelId(ch.tuple) == ch.channel_id(31337) != before
    finally:
        boa.env.evm.patch.chain_id = old
