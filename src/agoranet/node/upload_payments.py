"""x402 payment of adapter uploads on a paid node: storage priced per megabyte.

The offer's ``adapters.storage_price_per_mb`` prices an upload (``POST
/v1/adapters``) by its archive's size: every started megabyte (10**6 bytes) costs
that many base units. The uploader pays with a ``batch-settlement`` voucher (or an
``exact`` payment) in the ``PAYMENT-SIGNATURE`` header, like a chat request; without
one, or with too little, the node answers 402 with the requirements (the size and
price in the body's ``agoranet`` object) and stores nothing. A malformed archive is a
400 before any payment is asked for.

A paid upload's voucher is held in the ledger (persisted) while the adapter is
checked and stored, then charged the whole price in one receipt whose ``tokensIn``
counts the megabytes (``tokensOut`` is 0), priced at the storage price per
megabyte -- :meth:`~agoranet.payments.pay.payer.Payer.storage_prices` checks it that
way. An upload that fails after its payment was accepted (an adapter for other
base weights) is released and costs nothing.
"""

from __future__ import annotations

import json

from starlette.responses import Response
from x402.schemas import PaymentRequired

from agoranet.api.errors import error_body
from agoranet.errors import PaymentRequiredError
from agoranet.market import TokenPrices
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import Authorization, PaymentAcceptor

__all__ = ["MEGABYTE", "UploadPayments", "megabytes"]

MEGABYTE = 1_000_000


def megabytes(size: int) -> int:
    """Started megabytes in ``size`` bytes (at least 1: an upload is never free of size)."""
    return max(1, -(-size // MEGABYTE))


class UploadPayments:
    """Prices, takes and charges the payment of adapter uploads."""

    def __init__(self, acceptor: PaymentAcceptor, price_per_mb: int) -> None:
        self.acceptor = acceptor
        self.price_per_mb = price_per_mb
        # A receipt counts megabytes as input tokens, at the price per megabyte.
        self.prices = TokenPrices(price_per_mb * MEGABYTE, 0)

    def price(self, size: int) -> int:
        return megabytes(size) * self.price_per_mb

    async def authorize(self, header: str | None, size: int,
                        request_id: str) -> Authorization:
        """Accept (and hold, for a voucher) the payment of an upload of ``size`` bytes."""
        return await self.acceptor.authorize(header, self.price(size), request_id)

    async def settle(self, auth: Authorization) -> None:
        """Move the payment on chain before the adapter is stored if its scheme settles
        each payment (``exact``); a voucher is claimed later, in a batch."""
        await self.acceptor.settle(auth)

    def payment_required(self, size: int, exc: PaymentRequiredError,
                         resource: str) -> PaymentRequired:
        return self.acceptor.payment_required(self.price(size), self.prices, error=exc.reason,
                                              corrective=exc.corrective, resource=resource)

    def required_response(self, size: int, exc: PaymentRequiredError,
                          resource: str) -> Response:
        """A 402 with the x402 requirements for an upload of ``size`` bytes."""
        required = self.payment_required(size, exc, resource)
        body = error_body(exc.message, error_type=exc.error_type, code=exc.reason)
        body["x402"] = required.model_dump(by_alias=True, exclude_none=True, mode="json")
        body["agoranet"] = {"bytes": size, "megabytes": megabytes(size),
                            "storage_price_per_mb": self.price_per_mb,
                            "amount": self.price(size)}
        return Response(json.dumps(body), status_code=exc.status_code,
                        media_type="application/json",
                        headers={x402wire.PAYMENT_REQUIRED: x402wire.encode_model(required)})

    async def charge(self, auth: Authorization, size: int) -> dict[str, str]:
        """Charge the upload's price (through the ledger's writer, as a paid request's
        charge); the ``PAYMENT-RESPONSE`` header with its receipt."""
        acceptor, mb, price = self.acceptor, megabytes(size), self.price(size)
        _, response = await acceptor.writer.unsynced(lambda: acceptor.charge(auth, mb, 0, price))
        settle = response.model_dump(by_alias=True, exclude_none=True, mode="json")
        return {x402wire.PAYMENT_RESPONSE: x402wire.encode_json(settle)}

    async def release(self, auth: Authorization) -> None:
        """The upload failed after its payment was accepted: nothing is charged."""
        acceptor = self.acceptor
        await acceptor.writer.unsynced(lambda: acceptor.release(auth))
