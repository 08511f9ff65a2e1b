"""secp256k1 signing and recovery of 32-byte digests (EIP-712), through ``coincurve``.

Signatures are 65 bytes ``r || s || v`` with ``v`` 27 or 28, as Ethereum
wallets produce them. These run on every paid request (a voucher recovered, a
receipt signed), so they call libsecp256k1 directly.

Only *canonical* signatures are read (:func:`signature_problem`), by the same
rule as the escrow contract's ``_recover`` (``BatchSettlement.vy``): 65 bytes,
``0 < r < n``, ``0 < s <= n/2`` (low s, EIP-2) and ``v`` 27 or 28. Every
ECDSA signature has a high-s twin (``n - s``, the other ``v``) and may be
written with ``v`` 0 or 1; the contract refuses those, so a node that took
them would serve vouchers it can never claim. :func:`canonical_signature`
turns such a twin into the canonical form (same signer), for records written
before this rule.
"""

from __future__ import annotations

from typing import Final

import coincurve
from eth_utils.crypto import keccak
from web3 import Web3

__all__ = [
    "SECP256K1_N",
    "SECP256K1_N_HALF",
    "DigestSigner",
    "canonical_signature",
    "keccak",
    "recover_address",
    "recover_address_bytes",
    "signature_problem",
]

SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_N_HALF: Final = SECP256K1_N // 2  # the contract's SECP256K1N_HALF


class DigestSigner:
    """Signs digests with one private key."""

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise ValueError("a private key is 32 bytes")
        self._key = coincurve.PrivateKey(private_key)
        public = self._key.public_key.format(compressed=False)[1:]
        self.address: str = Web3.to_checksum_address(keccak(public)[-20:])

    def sign(self, digest: bytes) -> bytes:
        raw = self._key.sign_recoverable(digest, hasher=None)
        return raw[:64] + bytes([raw[64] + 27])


def signature_problem(signature: bytes) -> str | None:
    """Why ``signature`` is not canonical (the escrow would refuse it), or None if it is."""
    if len(signature) != 65:
        return f"a signature is 65 bytes, not {len(signature)}"
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")
    if not 0 < r < SECP256K1_N:
        return "its r is out of range"
    if not 0 < s <= SECP256K1_N_HALF:
        return "its s is not in the lower half of the curve order (a high-s signature)"
    if signature[64] not in (27, 28):
        return f"its v is {signature[64]}, not 27 or 28"
    return None


def canonical_signature(signature: bytes) -> bytes | None:
    """The canonical twin of ``signature`` (low s, ``v`` 27/28; same signer), or None
    if it cannot be read as an ECDSA signature at all."""
    if len(signature) != 65:
        return None
    v = signature[64] - 27 if signature[64] >= 27 else signature[64]
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")
    if v not in (0, 1) or not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        return None
    if s > SECP256K1_N_HALF:
        s, v = SECP256K1_N - s, 1 - v
    return signature[:32] + s.to_bytes(32, "big") + bytes([v + 27])


def recover_address(digest: bytes, signature: bytes) -> str | None:
    """The checksummed address that signed ``digest``, or None unless ``signature`` is
    valid and canonical (:func:`signature_problem`)."""
    raw = recover_address_bytes(digest, signature)
    return None if raw is None else Web3.to_checksum_address(raw)


def recover_address_bytes(digest: bytes, signature: bytes) -> bytes | None:
    """The 20 bytes of the address that signed ``digest``, or None unless ``signature``
    is valid and canonical (:func:`signature_problem`): :func:`recover_address` without
    the checksum (a comparison of bytes needs none)."""
    if len(digest) != 32 or signature_problem(signature) is not None:
        return None
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([signature[64] - 27]), digest, hasher=None)
    except ValueError:
        return None
    return keccak(public.format(compressed=False)[1:])[-20:]
