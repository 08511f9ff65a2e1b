"""Shape checks on the untrusted fields of an x402 payment payload.

The x402 SDK's ``from_dict`` constructors and facilitators assume well-formed
input: an address of the wrong length, a salt that is not 32 bytes or a
``withdrawDelay`` outside ``uint40`` ends in an exception deep inside eth-abi.
These checks run first and raise ``ValueError`` naming the field, which the
acceptor turns into a 402 with the x402 reason.
"""

from __future__ import annotations

import re
from typing import Any, Final

from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

__all__ = ["address", "channel_config", "exact_payload", "hex_bytes", "uint"]

_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX: Final = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_DIGITS: Final = re.compile(r"[0-9]{1,78}")


def address(value: Any, name: str) -> str:
    """A 20-byte hex address (``0x`` + 40 hex digits)."""
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise ValueError(f"{name} is not an address (0x and 40 hex digits)")
    return value


def hex_bytes(value: Any, name: str, size: int | None = None) -> str:
    """``0x``-prefixed hex of whole bytes; exactly ``size`` bytes when given."""
    if not isinstance(value, str) or not _HEX.fullmatch(value) or \
            (size is not None and len(value) != 2 + 2 * size):
        what = f"{size} bytes" if size is not None else "bytes"
        raise ValueError(f"{name} is not 0x-prefixed hex of {what}")
    return value


def uint(value: Any, name: str, bits: int = 256) -> int:
    """A non-negative integer below ``2**bits``, as a JSON integer or a decimal string."""
    if isinstance(value, bool) or not isinstance(value, int | str) or \
            (isinstance(value, str) and not _DIGITS.fullmatch(value)):
        raise ValueError(f"{name} is not a decimal integer")
    number = int(value)
    if not 0 <= number < 2**bits:
        raise ValueError(f"{name} is out of range for a uint{bits}")
    return number


def channel_config(value: Any) -> ChannelConfig:
    """A batch-settlement ``channelConfig`` whose every field has the on-chain type."""
    if not isinstance(value, dict):
        raise ValueError("channelConfig is not an object")
    for name in ("payer", "payerAuthorizer", "receiver", "receiverAuthorizer", "token"):
        address(value.get(name), f"channelConfig.{name}")
    hex_bytes(value.get("salt"), "channelConfig.salt", 32)
    uint(value.get("withdrawDelay"), "channelConfig.withdrawDelay", 40)
    return ChannelConfig.from_dict(value)


def exact_payload(value: Any) -> None:
    """An ``exact`` (EIP-3009) payload: an ``authorization`` of typed fields and a signature."""
    if not isinstance(value, dict) or not isinstance(value.get("authorization"), dict):
        raise ValueError("an exact payload needs an 'authorization' object")
    auth = value["authorization"]
    address(auth.get("from"), "authorization.from")
    address(auth.get("to"), "authorization.to")
    for name in ("value", "validAfter", "validBefore"):
        uint(auth.get(name), f"authorization.{name}")
    hex_bytes(auth.get("nonce"), "authorization.nonce", 32)
    hex_bytes(value.get("signature"), "signature")
