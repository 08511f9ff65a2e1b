"""Receipts a node signs for each paid request, and their verification.

A receipt says: for request ``request_id`` on channel ``channel_id`` the node
counted ``tokens_in`` prompt and ``tokens_out`` completion tokens, charged
``amount``, and has charged ``cumulative`` on that channel in all. It is an
EIP-712 ``Receipt`` under the ``agoranet receipt`` domain of the chain, signed
with the node's key, so a payer can prove what a node claimed to have served.
The digest is computed here with keccak directly (fast) and matches
``eth_account``'s ``encode_typed_data`` (see the tests).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any, Final

from web3 import Web3

from agoranet.errors import ReceiptError
from agoranet.payments.ecdsa import DigestSigner, keccak, recover_address

__all__ = [
    "RECEIPT_DOMAIN_NAME",
    "RECEIPT_TYPES",
    "Receipt",
    "ReceiptSigner",
    "receipt_digest",
    "recover_receipt_signer",
    "verify_receipt",
]

RECEIPT_DOMAIN_NAME: Final = "agoranet receipt"
RECEIPT_DOMAIN_VERSION: Final = "1"
RECEIPT_TYPES: Final = {
    "Receipt": [
        {"name": "requestId", "type": "string"},
        {"name": "channelId", "type": "bytes32"},
        {"name": "tokensIn", "type": "uint256"},
        {"name": "tokensOut", "type": "uint256"},
        {"name": "amount", "type": "uint256"},
        {"name": "cumulative", "type": "uint256"},
    ]
}


def _keccak(data: bytes = b"", *, text: str | None = None) -> bytes:
    return keccak(text.encode()) if text is not None else keccak(data)


_DOMAIN_TYPE_HASH: Final = _keccak(text="EIP712Domain(string name,string version,uint256 chainId)")
_RECEIPT_TYPE_HASH: Final = _keccak(
    text="Receipt(string requestId,bytes32 channelId,uint256 tokensIn,uint256 tokensOut,"
    "uint256 amount,uint256 cumulative)"
)


@dataclass(frozen=True, slots=True)
class Receipt:
    """One signed receipt; amounts in base units."""

    request_id: str
    channel_id: str
    tokens_in: int
    tokens_out: int
    amount: int
    cumulative: int
    chain_id: int
    signer: str = ""
    signature: str = ""

    def to_json(self) -> dict[str, Any]:
        """The wire form (camelCase; ``amount`` and ``cumulative`` as decimal strings)."""
        return {"requestId": self.request_id, "channelId": self.channel_id,
                "tokensIn": self.tokens_in, "tokensOut": self.tokens_out,
                "amount": str(self.amount), "cumulative": str(self.cumulative),
                "chainId": self.chain_id, "signer": self.signer, "signature": self.signature}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        try:
            return cls(
                request_id=str(data["requestId"]),
                channel_id=str(data["channelId"]).lower(),
                tokens_in=int(data["tokensIn"]),
                tokens_out=int(data["tokensOut"]),
                amount=int(data["amount"]),
                cumulative=int(data["cumulative"]),
                chain_id=int(data["chainId"]),
                signer=str(data.get("signer", "")),
                signature=str(data.get("signature", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReceiptError(f"malformed receipt: {exc}") from None


def _u256(value: int) -> bytes:
    if value < 0 or value >= 2**256:
        raise ReceiptError(f"receipt value {value} is out of range")
    return value.to_bytes(32, "big")


def _bytes32(hex_value: str) -> bytes:
    raw = bytes.fromhex(hex_value.removeprefix("0x"))
    if len(raw) != 32:
        raise ReceiptError(f"{hex_value!r} is not 32 bytes")
    return raw


@functools.lru_cache(maxsize=16)
def _domain(chain_id: int) -> bytes:
    return _keccak(_DOMAIN_TYPE_HASH + _keccak(text=RECEIPT_DOMAIN_NAME)
                   + _keccak(text=RECEIPT_DOMAIN_VERSION) + _u256(chain_id))


def receipt_digest(receipt: Receipt) -> bytes:
    """The EIP-712 digest signed for ``receipt``."""
    domain = _domain(receipt.chain_id)
    struct = _keccak(
        _RECEIPT_TYPE_HASH
        + _keccak(text=receipt.request_id)
        + _bytes32(receipt.channel_id)
        + _u256(receipt.tokens_in)
        + _u256(receipt.tokens_out)
        + _u256(receipt.amount)
        + _u256(receipt.cumulative)
    )
    return _keccak(b"\x19\x01" + domain + struct)


class ReceiptSigner:
    """Signs receipts with the node's key."""

    def __init__(self, private_key: bytes | str) -> None:
        raw = bytes.fromhex(private_key.removeprefix("0x")) if isinstance(private_key, str) \
            else private_key
        self._signer = DigestSigner(raw)
        self.address = self._signer.address

    def sign(self, receipt: Receipt) -> Receipt:
        packed = self._signer.sign(receipt_digest(receipt))
        return replace(receipt, signer=self.address, signature="0x" + packed.hex())


def recover_receipt_signer(receipt: Receipt) -> str:
    try:
        raw = bytes.fromhex(receipt.signature.removeprefix("0x"))
        signer = recover_address(receipt_digest(receipt), raw)
    except ValueError as exc:
        raise ReceiptError(f"receipt signature is invalid: {exc}") from None
    if signer is None:
        raise ReceiptError("receipt signature is invalid")
    return signer


def verify_receipt(receipt: Receipt, node: str) -> None:
    """ReceiptError unless ``receipt`` is signed by ``node``."""
    signer = recover_receipt_signer(receipt)
    if signer != Web3.to_checksum_address(node):
        raise ReceiptError(f"receipt {receipt.request_id} is signed by {signer}, not {node}")
