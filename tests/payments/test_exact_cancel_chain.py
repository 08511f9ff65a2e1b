"""Cancelling an unanswered ``exact`` payment on the real dev chain (EIP-3009).

The gateway's wallet signs a transfer for an ``exact`` seller; if the seller never
answers, :func:`~agoranet.payments.pay.exact_cancel.cancel_authorization` decides on chain
whether the money moved: an unused authorization is cancelled (True) and the seller's
later settlement of it reverts, nothing moved; one the seller settled first is not
(False), and the money it moved stays moved. ``ToolPayers.cancel_exact`` does it with the
gateway's wallet.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from x402.schemas import PaymentRequirements

from agoranet.chain.rpc import send
from agoranet.errors import ContractError
from agoranet.gateway.budget import Budget
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_payer import ToolPayers
from agoranet.payments import x402wire
from agoranet.payments.pay.exact_cancel import authorization_used, cancel_authorization
from agoranet.payments.schemes import SCHEME_EXACT, scheme_client
from agoranet.payments.wallet import stablecoin_contract

from .conftest import Env

pytestmark = pytest.mark.timeout(60)

PRICE = 1_000


def _signed(env: Env, payer: LocalAccount, receiver: LocalAccount) -> dict[str, str]:
    """An exact payment's EIP-3009 authorization and signature, as the gateway signs it."""
    requirement = PaymentRequirements(
        scheme=SCHEME_EXACT, network=f"eip155:{env.addresses.chain_id}",
        asset=env.addresses.require_stablecoin(), amount=str(PRICE),
        pay_to=receiver.address, max_timeout_seconds=3600,
        extra={"name": env.addresses.token_name or "USD Coin",
               "version": env.addresses.token_version or "2"})
    client = scheme_client(SCHEME_EXACT, account=payer, max_amount=PRICE)
    payload = x402wire.decode_payment_payload(client.pay(requirement, "call-1").header).payload
    return {**payload["authorization"], "signature": payload["signature"]}


def _settle(env: Env, receiver: LocalAccount, signed: dict[str, str]) -> None:
    """The seller's settlement: ``transferWithAuthorization`` with the buyer's signature."""
    raw = bytes.fromhex(signed["signature"].removeprefix("0x"))
    token = stablecoin_contract(env.w3, env.addresses)
    send(env.w3, receiver, token.functions.transferWithAuthorization(
        signed["from"], signed["to"], int(signed["value"]), int(signed["validAfter"]),
        int(signed["validBefore"]), bytes.fromhex(signed["nonce"][2:]), raw[64], raw[:32],
        raw[32:64]), "settling the transfer")


def _balance(env: Env, who: str) -> int:
    return int(stablecoin_contract(env.w3, env.addresses).functions.balanceOf(who).call())


def test_an_unused_transfer_is_cancelled_and_can_no_longer_be_settled(
        env: Env, payer: LocalAccount, receiver: LocalAccount) -> None:
    signed = _signed(env, payer, receiver)
    before = (_balance(env, payer.address), _balance(env, receiver.address))
    assert not authorization_used(env.w3, env.addresses, payer.address, signed["nonce"])
    assert cancel_authorization(env.w3, env.addresses, payer, signed["nonce"]) is True
    assert authorization_used(env.w3, env.addresses, payer.address, signed["nonce"])
    with pytest.raises(ContractError, match="used or canceled"):
        _settle(env, receiver, signed)  # too late for the seller
    assert (_balance(env, payer.address), _balance(env, receiver.address)) == before


def test_a_settled_transfer_is_not_cancelled(env: Env, payer: LocalAccount,
                                            receiver: LocalAccount) -> None:
    signed = _signed(env, payer, receiver)
    before = _balance(env, payer.address)
    _settle(env, receiver, signed)
    assert cancel_authorization(env.w3, env.addresses, payer, signed["nonce"]) is False
    assert _balance(env, payer.address) == before - PRICE  # it moved, and stays moved


def test_the_gateway_s_payers_cancel_with_its_wallet(env: Env, payer: LocalAccount,
                                                    receiver: LocalAccount,
                                                    tmp_path: Path) -> None:
    spend = SpendLog(tmp_path / "spend.sqlite")
    payers = ToolPayers(env.dev.rpc_url, payer, tmp_path / "channels", 10_000, Budget(None),
                        spend, chain_timeout_s=5.0)
    try:
        signed = _signed(env, payer, receiver)
        assert asyncio.run(payers.cancel_exact(signed["nonce"])) is True
        assert asyncio.run(payers.cancel_exact(signed["nonce"])) is False  # used now
    finally:
        payers.close()
        spend.close()


def test_a_transfer_settled_while_the_cancel_is_on_its_way_is_not_cancelled(
        env: Env, payer: LocalAccount, receiver: LocalAccount,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The seller settles between our check and our cancel: the cancel reverts, the chain
    is asked again, and the answer is "it moved" (False), never an error or a False True."""
    from agoranet.payments.pay import exact_cancel

    signed = _signed(env, payer, receiver)
    before = _balance(env, payer.address)
    real = exact_cancel.authorization_used
    asked: list[bool] = []

    def checked_before_the_seller(*args: object) -> bool:
        if not asked:  # our first look: the seller has not settled yet ...
            asked.append(False)
            _settle(env, receiver, signed)  # ... and does so right after it
            return False
        asked.append(real(*args))  # type: ignore[arg-type]
        return asked[-1]

    monkeypatch.setattr(exact_cancel, "authorization_used", checked_before_the_seller)
    assert cancel_authorization(env.w3, env.addresses, payer, signed["nonce"]) is False
    assert asked == [False, True]
    assert _balance(env, payer.address) == before - PRICE


@pytest.mark.parametrize("nonce", ["0x" + "ab" * 31, "0x" + "ab" * 33])
def test_a_nonce_of_another_length_is_refused_before_anything_is_sent(nonce: str) -> None:
    from agoranet.payments.pay.exact_cancel import _bytes32

    with pytest.raises(ValueError, match=f"^an EIP-3009 nonce is 32 bytes, not {len(nonce) // 2 - 1}$"):
        _bytes32(nonce)
