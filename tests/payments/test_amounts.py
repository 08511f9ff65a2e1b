"""Amount and address parsing: exact Decimal conversion to base units, never floats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agoranet.errors import ConfigError
from agoranet.payments.amounts import format_amount, parse_address, parse_amount


@pytest.mark.parametrize(
    ("text", "base"),
    [("12.5", 12_500_000), ("0.000001", 1), ("1", 1_000_000), ("1_000", 1_000_000_000),
     ("0.1", 100_000), ("1e3", 1_000_000_000), (" 7 ", 7_000_000)],
)  # fmt: skip
def test_parse_amount(text: str, base: int) -> None:
    assert parse_amount(text) == base


@pytest.mark.parametrize(
    ("text", "needle"),
    [("abc", "not a number"), ("-1", "negative"), ("-0.5", "negative"), ("nan", "finite"),
     ("inf", "finite"), ("1.0000001", "more than 6 decimals"), ("0", "more than zero"),
     ("", "not a number"), ("0x10", "not a number"), (str(2**128), "too large")],
)  # fmt: skip
def test_parse_amount_refuses(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_amount(text)


def test_base_units() -> None:
    assert parse_amount("12500000", base_units=True) == 12_500_000
    for bad in ("1.5", "-3", "1e3", "abc"):
        with pytest.raises(ConfigError, match="whole number"):
            parse_amount(bad, base_units=True)
    assert parse_amount("0", base_units=True, allow_zero=True) == 0


def test_format_amount() -> None:
    assert format_amount(12_500_000) == "12.500000"
    assert format_amount(1) == "0.000001"
    assert format_amount(-1_000_001) == "-1.000001"
    assert format_amount(10**18 + 5, 18) == "1.000000000000000005"


@given(st.integers(min_value=1, max_value=2**128 - 1))
def test_format_then_parse_round_trips(base: int) -> None:
    assert parse_amount(format_amount(base)) == base
    assert parse_amount(format_amount(base, 18), decimals=18) == base


def test_parse_address() -> None:
    lower = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
    good = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert parse_address(lower) == good == parse_address(good)
    assert parse_address(lower.upper().replace("0X", "0x")) == good
    with pytest.raises(ConfigError, match="wrong checksum"):
        parse_address(good[:-1] + "c")
    for bad in ("0x123", lower[2:], lower + "00", "0x" + "g" * 40, ""):
        with pytest.raises(ConfigError, match="not an Ethereum address"):
            parse_address(bad)
