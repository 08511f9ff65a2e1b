"""A node's offer: what it serves, at what price, from which weights.

Published at ``GET /.well-known/agoranet``. Prices are integers in the
stablecoin's base units per million tokens; no float ever touches money.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from agoranet.engines.base import ModelInfo
from agoranet.market import PriceBook, TokenPrices

__all__ = [
    "AdapterTerms",
    "CommitmentTerms",
    "FineTuningTerms",
    "ModelOffer",
    "Offer",
    "PaymentOffer",
    "Price",
    "build_offer",
    "commitment_terms",
]

OFFER_VERSION = 1


class Price(BaseModel):
    input_per_million: int = Field(ge=0)
    output_per_million: int = Field(ge=0)

    def token_prices(self) -> TokenPrices:
        return TokenPrices(self.input_per_million, self.output_per_million)


class AdapterTerms(BaseModel):
    """Whether a model takes LoRA adapters (``MODEL@adapter:<sha256>``) and at what surcharge.

    ``storage_price_per_mb``: what a paid node charges for an upload (``POST
    /v1/adapters``), per started megabyte (10**6 bytes) of the archive, in base units;
    None on a free node (and in offers from before the field, serialised without it so
    that their signature still checks).
    """

    accepted: bool
    surcharge: Price = Field(default_factory=lambda: Price(input_per_million=0,
                                                           output_per_million=0))
    max_bytes: int = 0
    storage_price_per_mb: int | None = Field(default=None, ge=0)

    @model_serializer(mode="wrap")
    def _without_unpriced(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("storage_price_per_mb") is None:
            data.pop("storage_price_per_mb", None)
        return data

    def upload_price(self, size: int) -> int:
        """What an upload of ``size`` bytes costs: each started megabyte (at least one)
        at the storage price; 0 where uploads are free."""
        return max(1, -(-size // 1_000_000)) * (self.storage_price_per_mb or 0)


class CommitmentTerms(BaseModel):
    """Whether a model's answers can carry TOPLOC-style commitments, and at what price.

    A request asks with ``"agoranet": {"commitments": true}``; its charge then adds
    ``price_per_million`` per million of its tokens, prompt and completion alike
    (:func:`agoranet.market.with_commitments`).
    """

    offered: bool
    algorithm: str | None = None
    chunk: int = 0  # decode steps per proof
    k: int = 0  # entries committed to per proof (each proof is 2 k + 2 bytes)
    price_per_million: int = Field(default=0, ge=0)


class ModelOffer(BaseModel):
    id: str
    context_length: int
    price: Price
    weights_sha256: dict[str, str] = Field(default_factory=dict)
    model_sha256: str | None = None
    sampler: str | None = None  # seeded sampling algorithm, so buyers can audit answers
    adapters: AdapterTerms = Field(default_factory=lambda: AdapterTerms(accepted=False))
    commitments: CommitmentTerms = Field(default_factory=lambda: CommitmentTerms(offered=False))
    # What it does beyond plain text (agoranet.engines.capabilities); None: an offer from
    # before the list, taken as text only and serialised without the field, so that its
    # signature still checks.
    capabilities: list[str] | None = None

    @model_serializer(mode="wrap")
    def _without_unlisted(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("capabilities") is None:
            data.pop("capabilities", None)
        return data

    def offers(self, needs: Iterable[str]) -> bool:
        """Whether this model offers every capability in ``needs``."""
        return set(needs) <= set(self.capabilities or ())

    def price_book(self) -> PriceBook:
        """This model's prices: base, adapter and commitments surcharges."""
        return PriceBook(self.price.token_prices(), self.adapters.surcharge.token_prices(),
                         self.commitments.price_per_million)


class FineTuningTerms(BaseModel):
    """Whether the node sells LoRA training, and its price per million training tokens."""

    accepted: bool = False
    price_per_million_training_tokens: int = Field(default=0, ge=0)


class PaymentOffer(BaseModel):
    """How a paid node is paid (x402): schemes, chain, token, receiver, channel terms."""

    schemes: list[str]
    network: str
    asset: str
    pay_to: str
    receiver_authorizer: str
    withdraw_delay: int
    min_deposit: int = Field(ge=0)
    token_name: str
    token_version: str


class Offer(BaseModel):
    version: int = OFFER_VERSION
    engine: str
    models: list[ModelOffer]
    fine_tuning: FineTuningTerms = Field(default_factory=FineTuningTerms)
    payment: PaymentOffer | None = None
    # EIP-191 signature by ``signer`` over the offer without these two fields
    # (see ``agoranet.registry.signing``).
    signer: str | None = None
    signature: str | None = None


def build_offer(
    engine: str,
    models: list[ModelInfo],
    price_in: int,
    price_out: int,
    adapters: AdapterTerms | None = None,
    fine_tuning: FineTuningTerms | None = None,
    commitment_price: int = 0,
) -> Offer:
    price = Price(input_per_million=price_in, output_per_million=price_out)
    terms = adapters or AdapterTerms(accepted=False)
    return Offer(
        engine=engine,
        fine_tuning=fine_tuning or FineTuningTerms(),
        models=[
            ModelOffer(
                id=m.name,
                context_length=m.context_length,
                price=price,
                weights_sha256=m.weights_sha256,
                model_sha256=m.model_sha256,
                sampler=m.sampler,
                adapters=terms,
                commitments=commitment_terms(m.commitments, commitment_price),
                capabilities=sorted(m.capabilities),
            )
            for m in models
        ],
    )


def commitment_terms(algorithm: str | None, price_per_million: int) -> CommitmentTerms:
    """The terms for a model whose engine produces ``algorithm`` commitments (None: none)."""
    if algorithm is None:
        return CommitmentTerms(offered=False)
    from agoranet.proofs.commitments import ALGORITHM, CHUNK, TOP_K

    if algorithm != ALGORITHM:
        return CommitmentTerms(offered=True, algorithm=algorithm,
                               price_per_million=price_per_million)
    return CommitmentTerms(offered=True, algorithm=algorithm, chunk=CHUNK, k=TOP_K,
                           price_per_million=price_per_million)
