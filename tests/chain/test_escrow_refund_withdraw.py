"""Cooperative refunds (receiver side) and timed withdrawals (payer side)."""

from __future__ import annotations

import boa

from .helpers import (
    AUTH,
    DELAY,
    OTHER,
    PAYER,
    RECEIVER,
    Channel,
    System,
    open_test_channel,
    reverts,
    sign_refund_sdk,
    voucher_claim,
)


def _claim(system: System, ch: Channel, total: int) -> None:
    system.escrow.claim(
        [voucher_claim(PAYER, ch, total, total, system.chain_id).tuple], sender=RECEIVER.address
    )


def _names(system: System) -> list[str]:
    return [type(e).__name__ for e in system.escrow.get_logs()]


def test_refund_caps_at_unclaimed(system: System) -> None:
    ch = open_test_channel(system)
    cid = ch.channel_id(system.chain_id)
    _claim(system, ch, 400)
    system.escrow.refund(ch.tuple, 100, sender=RECEIVER.address)
    assert "Refunded" in _names(system)
    assert system.token.balanceOf(PAYER.address) == 100
    system.escrow.refund(ch.tuple, 10**9, sender=AUTH.address)
    assert system.token.balanceOf(PAYER.address) == 600
    assert tuple(system.escrow.channels(cid)) == (400, 400)
    assert system.escrow.refundNonce(cid) == 2
    system.escrow.refund(ch.tuple, 1, sender=RECEIVER.address)  # nothing left: nonce still moves
    assert _names(system) == [] and system.escrow.refundNonce(cid) == 3
    system.escrow.settle(RECEIVER.address, system.token.address)
    assert system.token.balanceOf(RECEIVER.address) == 400
    assert system.token.balanceOf(system.escrow.address) == 0


def test_full_refund_closes_channel(system: System) -> None:
    ch = open_test_channel(system)
    system.escrow.refund(ch.tuple, 1_000, sender=RECEIVER.address)
    assert "ChannelClosed" in _names(system)
    assert system.token.balanceOf(PAYER.address) == 1_000


def test_refund_reverts(system: System) -> None:
    ch = open_test_channel(system)
    with reverts("NotAuthorizedToRefund"):
        system.escrow.refund(ch.tuple, 1, sender=PAYER.address)
    with reverts("ZeroRefund"):
        system.escrow.refund(ch.tuple, 0, sender=RECEIVER.address)
    assert system.escrow.refundNonce(ch.channel_id(system.chain_id)) == 0


def test_refund_with_signature(system: System) -> None:
    ch = open_test_channel(system)
    cid = ch.channel_id(system.chain_id)
    sig = sign_refund_sdk(AUTH, ch, 300, 0, system.chain_id)
    with reverts("InvalidRefundNonce"):
        system.escrow.refundWithSignature(ch.tuple, 300, 1, sig)
    with reverts("InvalidSignature"):
        system.escrow.refundWithSignature(ch.tuple, 301, 0, sig)
    with reverts("InvalidSignature"):
        system.escrow.refundWithSignature(
            ch.tuple, 300, 0, sign_refund_sdk(OTHER, ch, 300, 0, system.chain_id)
        )
    system.escrow.refundWithSignature(ch.tuple, 300, 0, sig, sender=OTHER.address)
    assert system.token.balanceOf(PAYER.address) == 300
    assert system.escrow.refundNonce(cid) == 1
    with reverts("InvalidRefundNonce"):  # replay
        system.escrow.refundWithSignature(ch.tuple, 300, 0, sig)
    with reverts("ZeroRefund"):
        system.escrow.refundWithSignature(
            ch.tuple, 0, 1, sign_refund_sdk(AUTH, ch, 0, 1, system.chain_id)
        )


def test_withdraw_flow(system: System) -> None:
    ch = open_test_channel(system)
    cid = ch.channel_id(system.chain_id)
    system.escrow.initiateWithdraw(ch.tuple, 700, sender=PAYER.address)
    assert "WithdrawInitiated" in _names(system)
    amount, started = system.escrow.pendingWithdrawals(cid)
    assert amount == 700 and started == boa.env.timestamp
    with reverts("WithdrawalAlreadyPending"):
        system.escrow.initiateWithdraw(ch.tuple, 1, sender=PAYER.address)
    with reverts("WithdrawDelayNotElapsed"):
        system.escrow.finalizeWithdraw(ch.tuple, sender=PAYER.address)
    _claim(system, ch, 500)  # the receiver claims during the window
    boa.env.time_travel(seconds=DELAY)
    with reverts("NotAuthorizedToFinalizeWithdraw"):
        system.escrow.finalizeWithdraw(ch.tuple, sender=RECEIVER.address)
    system.escrow.finalizeWithdraw(ch.tuple, sender=PAYER.address)
    assert "WithdrawFinalized" in _names(system)
    assert system.token.balanceOf(PAYER.address) == 500  # capped by the claim
    assert tuple(system.escrow.channels(cid)) == (500, 500)
    assert tuple(system.escrow.pendingWithdrawals(cid)) == (0, 0)
    with reverts("WithdrawalNotPending"):
        system.escrow.finalizeWithdraw(ch.tuple, sender=PAYER.address)


def test_withdraw_by_payer_authorizer_pays_payer_and_closes(system: System) -> None:
    ch = open_test_channel(system, payer_authorizer=OTHER.address)
    system.escrow.initiateWithdraw(ch.tuple, 1_000, sender=OTHER.address)
    boa.env.time_travel(seconds=DELAY)
    system.escrow.finalizeWithdraw(ch.tuple, sender=OTHER.address)
    assert "ChannelClosed" in _names(system)
    assert system.token.balanceOf(PAYER.address) == 1_000
    assert system.token.balanceOf(OTHER.address) == 0


def test_initiate_withdraw_reverts(system: System) -> None:
    ch = open_test_channel(system)
    with reverts("InvalidChannel"):
        system.escrow.initiateWithdraw(ch.tuple, 1, sender=RECEIVER.address)
    with reverts("NothingToWithdraw"):
        system.escrow.initiateWithdraw(ch.tuple, 0, sender=PAYER.address)
    _claim(system, ch, 900)
    with reverts("WithdrawAmountExceedsAvailable"):
        system.escrow.initiateWithdraw(ch.tuple, 101, sender=PAYER.address)


def test_refund_shrinks_or_clears_pending_withdrawal(system: System) -> None:
    ch = open_test_channel(system)
    cid = ch.channel_id(system.chain_id)
    system.escrow.initiateWithdraw(ch.tuple, 600, sender=PAYER.address)
    system.escrow.refund(ch.tuple, 200, sender=RECEIVER.address)
    assert system.escrow.pendingWithdrawals(cid)[0] == 400
    system.escrow.refund(ch.tuple, 400, sender=RECEIVER.address)
    assert tuple(system.escrow.pendingWithdrawals(cid)) == (0, 0)
    assert system.token.balanceOf(PAYER.address) == 600
