"""A receipt as it travels: read back exactly as written (an unsigned one stays unsigned),
its numbers held to uint256 like the contract's, and every way it can be unreadable or
badly signed refused as a ReceiptError that says which, never another exception."""

from __future__ import annotations

import pytest
from eth_account import Account

from agoranet.errors import ReceiptError
from agoranet.payments.receipts import (
    Receipt,
    ReceiptSigner,
    receipt_digest,
    recover_receipt_signer,
    verify_receipt,
)

CID = "0x" + "ab" * 32
KEY = Account.create()


def _receipt(**changes: object) -> Receipt:
    fields: dict[str, object] = {"request_id": "req-1", "channel_id": CID, "tokens_in": 3,
                                 "tokens_out": 4, "amount": 10, "cumulative": 30,
                                 "chain_id": 31337}
    fields.update(changes)
    return Receipt(**fields)  # type: ignore[arg-type]


def test_a_receipt_reads_back_as_written_signed_or_not() -> None:
    unsigned = _receipt()
    wire = unsigned.to_json()
    assert wire == {"requestId": "req-1", "channelId": CID, "tokensIn": 3, "tokensOut": 4,
                    "amount": "10", "cumulative": "30", "chainId": 31337, "signer": "",
                    "signature": ""}
    del wire["signer"], wire["signature"]
    assert Receipt.from_json(wire) == unsigned
    signed = ReceiptSigner(bytes(KEY.key)).sign(unsigned)
    assert Receipt.from_json(signed.to_json()) == signed


@pytest.mark.parametrize(
    "wire",
    [{}, {"requestId": "r"}, {**_receipt().to_json(), "tokensIn": "three"},
     {**_receipt().to_json(), "amount": None}],
)  # fmt: skip
def test_an_unreadable_receipt_is_a_receipt_error(wire: dict[str, object]) -> None:
    with pytest.raises(ReceiptError, match=r"^malformed receipt: "):
        Receipt.from_json(wire)


@pytest.mark.parametrize(
    "changes",
    [{"amount": -1}, {"tokens_in": -1}, {"cumulative": 2**256}, {"tokens_out": 2**256},
     {"chain_id": 2**256}],
)  # fmt: skip
def test_a_number_outside_uint256_cannot_be_signed_or_checked(changes: dict[str, int]) -> None:
    value = next(iter(changes.values()))
    with pytest.raises(ReceiptError, match=f"^receipt value {value} is out of range$"):
        receipt_digest(_receipt(**changes))


def test_the_largest_uint256_is_a_valid_amount() -> None:
    big = _receipt(amount=2**256 - 1, cumulative=2**256 - 1)
    signed = ReceiptSigner(bytes(KEY.key)).sign(big)
    assert recover_receipt_signer(signed) == KEY.address


@pytest.mark.parametrize("channel", ["0x" + "ab" * 31, "0x" + "ab" * 33, "0x"])
def test_a_channel_id_that_is_not_32_bytes_is_refused(channel: str) -> None:
    with pytest.raises(ReceiptError, match=r"is not 32 bytes$"):
        receipt_digest(_receipt(channel_id=channel))


def test_a_bad_signature_is_refused_as_invalid() -> None:
    signed = ReceiptSigner(bytes(KEY.key)).sign(_receipt())
    for signature, reason in (("0xzz", "receipt signature is invalid: "),
                              ("0x" + "00" * 65, "receipt signature is invalid$"),
                              ("", "receipt signature is invalid$")):
        forged = Receipt.from_json({**signed.to_json(), "signature": signature})
        with pytest.raises(ReceiptError, match=f"^{reason}"):
            recover_receipt_signer(forged)
        with pytest.raises(ReceiptError, match=f"^{reason}"):
            verify_receipt(forged, KEY.address)
    other = Account.create().address
    with pytest.raises(ReceiptError, match=f"^receipt req-1 is signed by {KEY.address}, not"):
        verify_receipt(signed, other)
    verify_receipt(signed, KEY.address.lower())  # any spelling of the node's address
