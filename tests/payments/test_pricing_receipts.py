"""Pricing in integers and signed receipts (no chain)."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from agoranet.errors import ReceiptError
from agoranet.market import TokenPrices, cost, worst_case
from agoranet.payments.receipts import (
    RECEIPT_DOMAIN_NAME,
    RECEIPT_TYPES,
    Receipt,
    ReceiptSigner,
    verify_receipt,
)


def test_cost_rounds_up_in_integers() -> None:
    prices = TokenPrices(1, 3)
    assert cost(prices, 0, 0) == 0
    assert cost(prices, 1, 0) == 1  # 1e-6 of a unit still costs one unit
    assert cost(TokenPrices(1_000_000, 2_000_000), 3, 5) == 13
    assert cost(TokenPrices(999_999, 0), 1, 0) == 1
    assert cost(TokenPrices(10**18, 10**18), 10**6, 10**6) == 2 * 10**18
    with pytest.raises(ValueError):
        cost(prices, -1, 0)


@pytest.mark.parametrize("tokens_out", [0, 1, 7, 100])
def test_charge_never_exceeds_worst_case(tokens_out: int) -> None:
    prices = TokenPrices(123_457, 987_651)
    assert cost(prices, 17, tokens_out) <= worst_case(prices, 17, 100)


def test_receipt_signature_is_eip712_and_verifies() -> None:
    account = Account.create()
    signer = ReceiptSigner(bytes(account.key))
    receipt = signer.sign(Receipt("req-1", "0x" + "ab" * 32, 5, 7, 123, 456, 31337))
    typed = encode_typed_data(
        domain_data={"name": RECEIPT_DOMAIN_NAME, "version": "1", "chainId": 31337},
        message_types=RECEIPT_TYPES,
        message_data={"requestId": "req-1", "channelId": bytes.fromhex("ab" * 32),
                      "tokensIn": 5, "tokensOut": 7, "amount": 123, "cumulative": 456})
    assert "0x" + bytes(account.sign_message(typed).signature).hex() == receipt.signature
    verify_receipt(receipt, account.address)
    assert Receipt.from_json(receipt.to_json()) == receipt
    tampered = Receipt("req-1", receipt.channel_id, 5, 7, 124, 456, 31337, receipt.signer,
                       receipt.signature)
    with pytest.raises(ReceiptError):
        verify_receipt(tampered, account.address)
    with pytest.raises(ReceiptError):
        verify_receipt(receipt, Account.create().address)
