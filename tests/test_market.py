"""The market's vocabulary: one way to read and write a model name, one cost function."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agoranet.market import (
    ModelName,
    PriceBook,
    TokenPrices,
    cost,
    training_cost,
)
from agoranet.registry.offer import AdapterTerms, CommitmentTerms, ModelOffer, Price

IDENT = "0123456789abcdef" * 4


def test_a_name_with_an_adapter_reads_and_prints_back() -> None:
    name = ModelName.parse(f"org/model@v2@adapter:{IDENT}")
    assert name == ModelName("org/model@v2", IDENT) and name.is_adapter
    assert str(name) == f"org/model@v2@adapter:{IDENT}"
    assert ModelName.parse("org/model@v2") == ModelName("org/model@v2")
    assert not ModelName.parse("tiny").is_adapter and str(ModelName("tiny")) == "tiny"


@pytest.mark.parametrize("ident", ["", "ABCDEF" * 11, IDENT[:-1], IDENT + "0", "g" * 64,
                                   f"{IDENT}@adapter:{IDENT}"])  # one adapter per name
def test_an_adapter_id_is_64_lowercase_hex_digits(ident: str) -> None:
    with pytest.raises(ValueError, match="adapter id must be 64 lowercase hex digits"):
        ModelName.parse(f"tiny@adapter:{ident}")


@given(st.text(min_size=1).filter(lambda s: "@adapter:" not in s),
       st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
def test_parse_inverts_str(base: str, adapter: str | None) -> None:
    name = ModelName(base, adapter)
    assert ModelName.parse(str(name)) == name
    assert ModelName.base_of(str(name)) == base
    assert ModelName.names_adapter(str(name)) is (adapter is not None)


def test_a_price_book_adds_each_surcharge_only_where_it_applies() -> None:
    book = PriceBook(TokenPrices(10, 20), TokenPrices(1, 2), commitments_per_million=5)
    assert book.prices("tiny") == TokenPrices(10, 20)
    assert book.prices(f"tiny@adapter:{IDENT}") == TokenPrices(11, 22)
    assert book.prices(ModelName("tiny", IDENT), commitments=True) == TokenPrices(16, 27)
    assert book.prices("tiny", commitments=True) == TokenPrices(15, 25)
    assert book.per_token(adapter=True) == TokenPrices(11, 22)
    assert book.per_token() == TokenPrices(10, 20)


def test_an_offer_prices_through_its_price_book() -> None:
    model = ModelOffer(id="tiny", context_length=8, price=Price(input_per_million=10,
                                                               output_per_million=20),
                       adapters=AdapterTerms(accepted=True, surcharge=Price(
                           input_per_million=1, output_per_million=2)),
                       commitments=CommitmentTerms(offered=True, price_per_million=5))
    assert model.price_book() == PriceBook(TokenPrices(10, 20), TokenPrices(1, 2), 5)


def test_training_costs_like_input_tokens_rounded_up() -> None:
    assert training_cost(1, 1) == 1 == cost(TokenPrices(1, 0), 1, 0)
    assert training_cost(3_000, 1_000_001) == 3_001
    assert training_cost(0, 10**9) == 0
