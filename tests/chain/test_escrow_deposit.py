"""Deposits through the EIP-3009 collector."""

from __future__ import annotations

import boa
import pytest
from eth.exceptions import Revert
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS

from agoranet.chain import compile_contract

from .helpers import (
    DELAY,
    ZERO,
    Channel,
    System,
    account,
    deploy,
    deposit_data,
    fund_and_deposit,
    reverts,
)
from .mocks import lazy_collector

PAYER, RECEIVER, AUTH = account("payer"), account("receiver"), account("auth")


def _channel(system: System, **kw: object) -> Channel:
    return Channel.make(
        PAYER.address, RECEIVER.address, AUTH.address, str(system.token.address), **kw
    )  # type: ignore[arg-type]


def test_deposit_moves_tokens_and_opens_channel(system: System) -> None:
    ch = _channel(system)
    cid = ch.channel_id(system.chain_id)
    fund_and_deposit(system, PAYER, ch, 1_000)
    logs = system.escrow.get_logs()
    names = [type(e).__name__ for e in logs]
    assert "ChannelCreated" in names and "Deposited" in names
    assert system.token.balanceOf(PAYER.address) == 0
    assert system.token.balanceOf(system.escrow.address) == 1_000
    assert system.token.balanceOf(system.collector.address) == 0
    assert tuple(system.escrow.channels(cid)) == (1_000, 0)

    fund_and_deposit(system, PAYER, ch, 500)
    names = [type(e).__name__ for e in system.escrow.get_logs()]
    assert "ChannelCreated" not in names and "Deposited" in names
    assert tuple(system.escrow.channels(cid)) == (1_500, 0)
    assert system.token.balanceOf(system.escrow.address) == 1_500


@pytest.mark.parametrize("field", [0, 2, 3, 4])
def test_invalid_channel(system: System, field: int) -> None:
    cfg = list(_channel(system).tuple)
    cfg[field] = ZERO
    with reverts("InvalidChannel"):
        system.escrow.deposit(tuple(cfg), 1, system.collector.address, b"")


@pytest.mark.parametrize("delay", [0, DELAY - 1, 2_592_001])
def test_withdraw_delay_bounds(system: System, delay: int) -> None:
    with reverts("WithdrawDelayOutOfRange"):
        system.escrow.deposit(
            _channel(system, withdraw_delay=delay).tuple, 1, system.collector.address, b""
        )


def test_zero_amount_and_collector(system: System) -> None:
    ch = _channel(system)
    with reverts("ZeroDeposit"):
        system.escrow.deposit(ch.tuple, 0, system.collector.address, b"")
    with reverts("InvalidCollector"):
        system.escrow.deposit(ch.tuple, 1, ZERO, b"")


def test_deposit_overflow(system: System) -> None:
    ch = _channel(system)
    fund_and_deposit(system, PAYER, ch, 2**128 - 1)
    system.token.mint(PAYER.address, 1, sender=system.minter)
    with reverts("DepositOverflow"):
        system.escrow.deposit(
            ch.tuple, 1, system.collector.address, deposit_data(system, PAYER, ch, 1)
        )


def test_collector_that_does_not_pay(system: System) -> None:
    with reverts("DepositCollectionFailed"):
        system.escrow.deposit(_channel(system).tuple, 5, lazy_collector().address, b"")


def test_bad_authorization_reverts_with_token_reason(system: System) -> None:
    ch = _channel(system)
    system.token.mint(PAYER.address, 10, sender=system.minter)
    data = deposit_data(system, PAYER, ch, 10)
    with reverts("Stablecoin: invalid signature"):  # signed for 10, asks 9
        system.escrow.deposit(ch.tuple, 9, system.collector.address, data)
    with reverts("Stablecoin: authorization is expired"):
        system.escrow.deposit(
            ch.tuple,
            10,
            system.collector.address,
            deposit_data(system, PAYER, ch, 10, valid_before=1),
        )
    system.escrow.deposit(ch.tuple, 10, system.collector.address, data)
    system.token.mint(PAYER.address, 10, sender=system.minter)
    with reverts("Stablecoin: authorization is used or canceled"):
        system.escrow.deposit(ch.tuple, 10, system.collector.address, data)


def test_signature_for_another_channel_fails(system: System) -> None:
    a, b = _channel(system), _channel(system)
    system.token.mint(PAYER.address, 10, sender=system.minter)
    with reverts("Stablecoin: invalid signature"):  # nonce binds the channel id
        system.escrow.deposit(
            b.tuple, 10, system.collector.address, deposit_data(system, PAYER, a, 10)
        )


def test_collector_only_serves_the_escrow(system: System) -> None:
    ch = _channel(system)
    assert system.collector.settlement() == BATCH_SETTLEMENT_ADDRESS
    system.token.mint(PAYER.address, 10, sender=system.minter)
    data = deposit_data(system, PAYER, ch, 10)
    thief = boa.env.generate_address("thief")
    with reverts("OnlyX402BatchSettlement"):
        system.collector.collect(
            PAYER.address,
            system.token.address,
            10,
            ch.channel_id(system.chain_id),
            data,
            sender=thief,
        )
    assert system.token.balanceOf(PAYER.address) == 10


def test_collector_needs_an_escrow() -> None:
    with pytest.raises(Revert) as info:
        deploy(compile_contract("Erc3009DepositCollector"), ZERO)
    assert b"InvalidX402BatchSettlementAddress" in info.value.args[0]
