"""Paying a node for an adapter upload, from a :class:`~agoranet.payments.pay.payer.Payer`.

A paid node prices uploads in its offer (``adapters.storage_price_per_mb``, see
:mod:`agoranet.node.upload_payments`): the payer pays exactly that for the archive's
size, in one voucher, and checks the signed receipt the node returns in
``PAYMENT-RESPONSE`` before believing it: for this request and channel, counting the
archive's megabytes (as ``tokensIn``) at the offer's storage price, no more than
the voucher allowed. A node that refuses the upload (a 4xx) charges nothing, and no
receipt is adopted. A channel the chain no longer backs is repaired once
(:meth:`~agoranet.payments.pay.payer.Payer.reconcile`) and the upload paid again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import httpx
from x402.mechanisms.evm.batch_settlement import errors as bs_errors

from agoranet.errors import PaymentError
from agoranet.market import TokenPrices
from agoranet.payments import x402wire
from agoranet.payments.pay.payer import Payer, PendingPayment
from agoranet.payments.receipts import Receipt
from agoranet.registry.offer import AdapterTerms

__all__ = ["PaidUpload", "storage_terms", "upload_adapter"]

_CHANNEL_STATE_ERRORS = frozenset({
    bs_errors.ERR_CHANNEL_NOT_FOUND, bs_errors.ERR_CUMULATIVE_EXCEEDS_BALANCE})


class PaidUpload:
    """The node's answer to an upload and, if it charged, the checked receipt."""

    def __init__(self, response: httpx.Response, receipt: Receipt | None) -> None:
        self.response = response
        self.receipt = receipt


def storage_terms(payer: Payer) -> AdapterTerms:
    """The node's adapter terms (the first model that takes adapters)."""
    for model in payer.offer.models:
        if model.adapters.accepted:
            return model.adapters
    raise PaymentError(f"{payer.root} takes no adapters")


def upload_adapter(payer: Payer, archive: bytes, *, params: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None,
                   client: httpx.Client | None = None, timeout: float = 120.0) -> PaidUpload:
    """``POST /v1/adapters`` with ``archive``, paid if the node prices uploads."""
    terms = storage_terms(payer)
    amount = terms.upload_price(len(archive))
    http = client or httpx.Client(timeout=timeout)
    try:
        for attempt in range(2):
            sent = {"content-type": "application/x-tar", **(headers or {})}
            pending = None
            if amount > 0:
                pending = payer.pay(amount, uuid.uuid4().hex)
                sent[x402wire.PAYMENT_SIGNATURE] = pending.header
                sent["x-request-id"] = pending.request_id
            response = http.post(f"{payer.root}/v1/adapters", content=archive,
                                 params=dict(params or {}), headers=sent)
            if response.status_code == 402 and attempt == 0 and \
                    _refusal(response) in _CHANNEL_STATE_ERRORS and \
                    payer.reconcile() is not None:
                continue  # the channel was repaired or replaced: pay again
            if pending is None or response.status_code != 201:
                return PaidUpload(response, None)
            return PaidUpload(response, _settle(payer, pending, response, terms))
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        if client is None:
            http.close()


def _refusal(response: httpx.Response) -> str | None:
    header = response.headers.get(x402wire.PAYMENT_REQUIRED)
    try:
        return x402wire.decode_payment_required(header).error if header else None
    except PaymentError:
        return None


def _settle(payer: Payer, pending: PendingPayment, response: httpx.Response,
            terms: AdapterTerms) -> Receipt:
    header = response.headers.get(x402wire.PAYMENT_RESPONSE)
    if not header:
        raise PaymentError("the node stored a paid upload without a receipt")
    try:
        settle = x402wire.decode_json(header, x402wire.PAYMENT_RESPONSE)
    except ValueError as exc:
        raise PaymentError(f"the node's {x402wire.PAYMENT_RESPONSE} header is invalid: "
                           f"{exc}") from None
    # Megabytes count as input tokens at the price per megabyte: the amount is checked
    # against them, and never more than the voucher (the offer's price for this size).
    price = terms.storage_price_per_mb or 0
    receipt = payer.check(pending, settle, "", prices=TokenPrices(price * 1_000_000, 0))
    payer.adopt(pending, receipt)
    return receipt
