"""Tiny test-only contracts (compiled by boa from these sources)."""

from __future__ import annotations

from typing import Any

import boa

LAZY_COLLECTOR = """
# pragma version ~=0.4.3
@external
def collect(payer: address, token: address, amount: uint256, channelId: bytes32, collectorData: Bytes[2048]):
    pass
"""

# An EIP-1271 wallet that accepts signatures made by its owner's key.
WALLET = """
# pragma version ~=0.4.3
owner: public(address)

@deploy
def __init__(owner: address):
    self.owner = owner

@external
@view
def isValidSignature(digest: bytes32, signature: Bytes[1024]) -> bytes4:
    if len(signature) != 65:
        return 0xffffffff
    v: uint256 = convert(slice(signature, 64, 1), uint256)
    r: bytes32 = extract32(signature, 0)
    s: bytes32 = extract32(signature, 32)
    if ecrecover(digest, v, r, s) == self.owner:
        return 0x1626ba7e
    return 0xffffffff
"""


def lazy_collector() -> Any:
    return boa.loads(LAZY_COLLECTOR)


def wallet(owner: str) -> Any:
    return boa.loads(WALLET, owner)
