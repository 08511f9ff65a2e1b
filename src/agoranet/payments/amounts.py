"""Money and addresses as typed at a command line, converted without floats.

Amounts are ``int`` base units everywhere; :func:`parse_amount` turns "12.5"
into base units with :class:`~decimal.Decimal` and refuses anything that does
not fit exactly, and :func:`format_amount` goes back with integer arithmetic.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Final

from web3 import Web3

from agoranet.errors import ConfigError

__all__ = [
    "NATIVE_DECIMALS",
    "STABLECOIN_DECIMALS",
    "format_amount",
    "parse_address",
    "parse_amount",
]

STABLECOIN_DECIMALS: Final = 6
NATIVE_DECIMALS: Final = 18
_MAX_UINT128: Final = 2**128 - 1


def parse_amount(
    text: str,
    *,
    decimals: int = STABLECOIN_DECIMALS,
    base_units: bool = False,
    allow_zero: bool = False,
    what: str = "amount",
) -> int:
    """``"12.5"`` → ``12_500_000`` (6 decimals); with ``base_units`` the text is an integer."""
    raw = text.strip().replace("_", "")
    if base_units:
        if not raw.isdigit():
            raise ConfigError(f"{what} {text!r} is not a non-negative whole number of base units")
        value = int(raw)
    else:
        try:
            number = Decimal(raw)
        except InvalidOperation:
            raise ConfigError(f"{what} {text!r} is not a number") from None
        if not number.is_finite():
            raise ConfigError(f"{what} {text!r} is not a finite number")
        if number < 0:
            raise ConfigError(f"{what} {text!r} is negative")
        scaled = number.scaleb(decimals)
        if scaled != scaled.to_integral_value():
            raise ConfigError(f"{what} {text!r} has more than {decimals} decimals")
        value = int(scaled)
    if value == 0 and not allow_zero:
        raise ConfigError(f"{what} must be more than zero")
    if value > _MAX_UINT128:
        raise ConfigError(f"{what} {text!r} is too large")
    return value


def format_amount(base: int, decimals: int = STABLECOIN_DECIMALS) -> str:
    """``12_500_000`` → ``"12.500000"``: all ``decimals`` digits, integer math only."""
    sign = "-" if base < 0 else ""
    whole, frac = divmod(abs(base), 10**decimals)
    if decimals == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{decimals}d}"


def parse_address(text: str, *, what: str = "address") -> str:
    """A checksummed address, or :class:`ConfigError` for anything else."""
    raw = text.strip()
    if not Web3.is_address(raw) or len(raw) != 42:
        raise ConfigError(f"{what} {text!r} is not an Ethereum address (0x and 40 hex digits)")
    if raw != raw.lower() and raw[2:] != raw[2:].upper() and Web3.to_checksum_address(raw) != raw:
        raise ConfigError(f"{what} {text!r} has a wrong checksum")
    return str(Web3.to_checksum_address(raw))
