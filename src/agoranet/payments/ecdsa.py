"""secp256k1 signing and recovery of 32-byte digests (EIP-712), through ``coincurve``.

Signatures are 65 bytes ``r || s || v`` with ``v`` 27 or 28 (0 or 1 is also
read), as Ethereum wallets produce them. These run on every paid request
(a voucher recovered, a receipt signed), so they call libsecp256k1 directly.
"""

from __future__ import annotations

from typing import Final

import coincurve
from eth_utils.crypto import keccak
from web3 import Web3

__all__ = ["DigestSigner", "keccak", "recover_address"]

_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


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


def recover_address(digest: bytes, signature: bytes) -> str | None:
    """The checksummed address that signed ``digest``, or None for an invalid signature."""
    if len(signature) != 65 or len(digest) != 32:
        return None
    v = signature[64] - 27 if signature[64] >= 27 else signature[64]
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")
    if v not in (0, 1) or not (0 < r < _N and 0 < s < _N):
        return None
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v]), digest, hasher=None)
    except ValueError:
        return None
    return Web3.to_checksum_address(keccak(public.format(compressed=False)[1:])[-20:])
