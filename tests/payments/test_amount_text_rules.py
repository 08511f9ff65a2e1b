"""Amounts as a person reads and types them: zero has no sign, whole units have no
point, digit groups work in base units too, and a refusal names the field it is about."""

from __future__ import annotations

import pytest

from agoranet.errors import ConfigError
from agoranet.payments.amounts import format_amount, parse_address, parse_amount


def test_a_zero_balance_is_not_shown_as_a_debt() -> None:
    assert format_amount(0) == "0.000000"
    assert format_amount(0, 18) == "0.000000000000000000"
    assert format_amount(999_999) == "0.999999"


def test_an_amount_without_decimals_is_shown_without_a_point() -> None:
    assert format_amount(5, 0) == "5"
    assert format_amount(-7, 0) == "-7"
    assert format_amount(5, 1) == "0.5"
    assert format_amount(15, 1) == "1.5"


def test_digit_groups_are_accepted_in_base_units_and_amounts() -> None:
    assert parse_amount("1_000", base_units=True) == 1000
    assert parse_amount(" 2_500_000 ", base_units=True) == 2_500_000
    assert parse_amount("1_000.5") == 1_000_500_000


@pytest.mark.parametrize(
    ("text", "reason"),
    [("abc", "'abc' is not a number"), ("-1", "'-1' is negative"), ("0", "must be more than zero")],
)  # fmt: skip
def test_a_refused_amount_names_the_field(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"^amount {reason}"):
        parse_amount(text)
    with pytest.raises(ConfigError, match=f"^deposit {reason}"):
        parse_amount(text, what="deposit")


def test_a_refused_address_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^address '0x12' is not an Ethereum address"):
        parse_address("0x12")
    with pytest.raises(ConfigError, match=r"^receiver '0x12' is not an Ethereum address"):
        parse_address("0x12", what="receiver")
