"""Claims (direct and authorizer-signed), settlement, multicall."""

from __future__ import annotations

import boa
import pytest

from .helpers import (
    AUTH,
    OTHER,
    PAYER,
    RECEIVER,
    Channel,
    Claim,
    System,
    fund_and_deposit,
    open_test_channel,
    reverts,
    sign_batch_sdk,
    sign_refund_sdk,
    voucher_claim,
)
from .mocks import wallet


def _names(system: System) -> list[str]:
    return [type(e).__name__ for e in system.escrow.get_logs()]


def test_claim_by_receiver_then_settle(system: System) -> None:
    ch = open_test_channel(system)
    cid = ch.channel_id(system.chain_id)
    system.escrow.claim(
        [voucher_claim(PAYER, ch, 300, 250, system.chain_id).tuple], sender=RECEIVER.address
    )
    assert "Claimed" in _names(system)
    assert tuple(system.escrow.channels(cid)) == (1_000, 250)
    assert tuple(system.escrow.receivers(RECEIVER.address, system.token.address)) == (250, 0)
    assert system.token.balanceOf(RECEIVER.address) == 0

    system.escrow.settle(RECEIVER.address, system.token.address, sender=OTHER.address)
    assert "Settled" in _names(system)
    assert system.token.balanceOf(RECEIVER.address) == 250
    assert system.token.balanceOf(system.escrow.address) == 750
    assert tuple(system.escrow.receivers(RECEIVER.address, system.token.address)) == (250, 250)
    system.escrow.settle(RECEIVER.address, system.token.address)  # nothing pending: no-op
    assert _names(system) == []
    assert system.token.balanceOf(RECEIVER.address) == 250


def test_claim_by_authorizer_and_stale_rows_are_noops(system: System) -> None:
    ch = open_test_channel(system)
    cid = ch.channel_id(system.chain_id)
    system.escrow.claim(
        [voucher_claim(PAYER, ch, 500, 500, system.chain_id).tuple], sender=AUTH.address
    )
    old = voucher_claim(PAYER, ch, 400, 400, system.chain_id)
    system.escrow.claim([old.tuple], sender=AUTH.address)
    assert "Claimed" not in _names(system)
    assert tuple(system.escrow.channels(cid)) == (1_000, 500)


def test_claim_reverts(system: System) -> None:
    ch = open_test_channel(system)
    cid_total = system.chain_id
    with reverts("EmptyBatch"):
        system.escrow.claim([], sender=RECEIVER.address)
    with reverts("NotAuthorizedToClaim"):
        system.escrow.claim(
            [voucher_claim(PAYER, ch, 10, 10, cid_total).tuple], sender=OTHER.address
        )
    with reverts("ClaimExceedsCeiling"):
        system.escrow.claim(
            [voucher_claim(PAYER, ch, 10, 11, cid_total).tuple], sender=RECEIVER.address
        )
    with reverts("ClaimExceedsBalance"):
        system.escrow.claim(
            [voucher_claim(PAYER, ch, 2_000, 1_001, cid_total).tuple], sender=RECEIVER.address
        )
    with reverts("InvalidSignature"):
        system.escrow.claim(
            [voucher_claim(OTHER, ch, 10, 10, cid_total).tuple], sender=RECEIVER.address
        )
    good = voucher_claim(PAYER, ch, 10, 10, cid_total)
    forged = Claim(ch, 20, good.signature, 20)  # signature was for 10
    with reverts("InvalidSignature"):
        system.escrow.claim([forged.tuple], sender=RECEIVER.address)
    with reverts("InvalidSignature"):
        system.escrow.claim([Claim(ch, 10, b"\x01" * 3, 10).tuple], sender=RECEIVER.address)


def test_payer_authorizer_signs_vouchers(system: System) -> None:
    ch = open_test_channel(system, payer_authorizer=OTHER.address)
    with reverts("InvalidSignature"):  # the payer's own key is not enough now
        system.escrow.claim(
            [voucher_claim(PAYER, ch, 10, 10, system.chain_id).tuple], sender=RECEIVER.address
        )
    system.escrow.claim(
        [voucher_claim(OTHER, ch, 10, 10, system.chain_id).tuple], sender=RECEIVER.address
    )
    assert tuple(system.escrow.channels(ch.channel_id(system.chain_id))) == (1_000, 10)


def test_contract_payer_uses_eip1271(system: System) -> None:
    w = wallet(OTHER.address)
    ch = Channel.make(str(w.address), RECEIVER.address, AUTH.address, str(system.token.address))
    cid = ch.channel_id(system.chain_id)
    # fund the channel balance directly (a wallet cannot sign EIP-3009 with ECDSA here)
    system.token.mint(system.escrow.address, 100, sender=system.minter)
    boa.env.set_storage(system.escrow.address, _balance_slot(cid), 100)
    assert tuple(system.escrow.channels(cid)) == (100, 0)
    with reverts("InvalidSignature"):
        system.escrow.claim(
            [voucher_claim(PAYER, ch, 10, 10, system.chain_id).tuple], sender=RECEIVER.address
        )
    system.escrow.claim(
        [voucher_claim(OTHER, ch, 10, 10, system.chain_id).tuple], sender=RECEIVER.address
    )
    assert tuple(system.escrow.channels(cid)) == (100, 10)


def _balance_slot(cid: bytes) -> int:
    """Vyper HashMap slot: keccak(slot . key); struct member 0 is `balance`."""
    from eth_utils import keccak

    return int.from_bytes(keccak((0).to_bytes(32, "big") + cid), "big")


def test_claim_with_signature(system: System) -> None:
    a, b = open_test_channel(system), open_test_channel(system, 500)
    rows = [
        voucher_claim(PAYER, a, 100, 100, system.chain_id),
        voucher_claim(PAYER, b, 50, 40, system.chain_id),
    ]
    sig = sign_batch_sdk(AUTH, rows, system.chain_id)
    with reverts("InvalidSignature"):
        system.escrow.claimWithSignature(
            [r.tuple for r in rows], sign_batch_sdk(OTHER, rows, system.chain_id)
        )
    with reverts("InvalidSignature"):  # signature does not cover a changed batch
        system.escrow.claimWithSignature([rows[0].tuple], sig)
    system.escrow.claimWithSignature([r.tuple for r in rows], sig, sender=OTHER.address)
    assert tuple(system.escrow.receivers(RECEIVER.address, system.token.address)) == (140, 0)
    with reverts("EmptyBatch"):
        system.escrow.claimWithSignature([], sig)


def test_claim_with_signature_needs_one_authorizer(system: System) -> None:
    a = open_test_channel(system)
    c = Channel.make(PAYER.address, RECEIVER.address, OTHER.address, str(system.token.address))
    fund_and_deposit(system, PAYER, c, 100)
    rows = [
        voucher_claim(PAYER, a, 10, 10, system.chain_id),
        voucher_claim(PAYER, c, 10, 10, system.chain_id),
    ]
    with reverts("NotReceiverAuthorizer"):
        system.escrow.claimWithSignature(
            [r.tuple for r in rows], sign_batch_sdk(AUTH, rows, system.chain_id)
        )


def test_batch_of_100_vouchers(system: System) -> None:
    chans = [open_test_channel(system, 25) for _ in range(4)]
    rows = [voucher_claim(PAYER, chans[i % 4], 25, 1 + i // 4, system.chain_id) for i in range(100)]
    system.escrow.claimWithSignature(
        [r.tuple for r in rows], sign_batch_sdk(AUTH, rows, system.chain_id)
    )
    assert tuple(system.escrow.receivers(RECEIVER.address, system.token.address)) == (4 * 25, 0)


def test_multicall_claim_then_refund(system: System) -> None:
    ch = open_test_channel(system)
    cid = ch.channel_id(system.chain_id)
    rows = [voucher_claim(PAYER, ch, 300, 300, system.chain_id)]
    claim_data = system.escrow.claimWithSignature.prepare_calldata(
        [r.tuple for r in rows], sign_batch_sdk(AUTH, rows, system.chain_id)
    )
    refund_data = system.escrow.refundWithSignature.prepare_calldata(
        ch.tuple, 10_000, 0, sign_refund_sdk(AUTH, ch, 10_000, 0, system.chain_id)
    )
    results = system.escrow.multicall([claim_data, refund_data])
    assert list(results) == [b"", b""]
    assert tuple(system.escrow.channels(cid)) == (300, 300)
    assert system.token.balanceOf(PAYER.address) == 700
    assert system.escrow.refundNonce(cid) == 1


def test_multicall_returns_and_bubbles_reverts(system: System) -> None:
    ch = open_test_channel(system)
    cid = ch.channel_id(system.chain_id)
    got = system.escrow.multicall([system.escrow.channels.prepare_calldata(cid)])
    assert got[0] == (1_000).to_bytes(32, "big") + (0).to_bytes(32, "big")
    bad = system.escrow.claim.prepare_calldata([])
    with reverts("EmptyBatch"):
        system.escrow.multicall([system.escrow.channels.prepare_calldata(cid), bad])


@pytest.mark.parametrize("total", [1, 2])
def test_settle_accumulates_over_channels(system: System, total: int) -> None:
    chans = [open_test_channel(system, 100) for _ in range(total)]
    for ch in chans:
        system.escrow.claim(
            [voucher_claim(PAYER, ch, 60, 60, system.chain_id).tuple], sender=RECEIVER.address
        )
    system.escrow.settle(RECEIVER.address, system.token.address)
    assert system.token.balanceOf(RECEIVER.address) == 60 * total
