"""The x402 v2 wire format: header names and base64 JSON, with the SDK's models.

Decoding never trusts its input: anything that is not base64 of a JSON object
of the expected shape becomes :class:`~agoranet.errors.PaymentRequiredError`
(for a payment header) or :class:`~agoranet.errors.PaymentError` (for a
response a payer reads), with a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from pydantic import ValidationError
from x402.schemas import PaymentPayload, PaymentRequired, SettleResponse

from agoranet.api import jsonlimits
from agoranet.errors import PaymentError, PaymentRequiredError

__all__ = [
    "PAYMENT_REQUIRED",
    "PAYMENT_RESPONSE",
    "PAYMENT_SIGNATURE",
    "decode_json",
    "decode_payment_payload",
    "decode_payment_required",
    "decode_settle_response",
    "encode_json",
    "encode_model",
]

PAYMENT_REQUIRED: Final = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE: Final = "PAYMENT-SIGNATURE"
PAYMENT_RESPONSE: Final = "PAYMENT-RESPONSE"
_MAX_HEADER: Final = 64 * 1024


def encode_json(data: dict[str, Any]) -> str:
    """Base64 of compact JSON (the x402 header encoding)."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.b64encode(raw).decode("ascii")


def encode_model(model: PaymentRequired | PaymentPayload | SettleResponse) -> str:
    return encode_json(model.model_dump(by_alias=True, exclude_none=True, mode="json"))


def decode_json(value: str, what: str) -> dict[str, Any]:
    """The JSON object inside a base64 header value; ValueError with a short reason."""
    if len(value) > _MAX_HEADER:
        raise ValueError(f"{what} is longer than {_MAX_HEADER} bytes")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not base64-encoded JSON") from exc
    return jsonlimits.loads_object(raw, what=what, max_bytes=_MAX_HEADER)


def decode_payment_payload(value: str) -> PaymentPayload:
    """The payment in a ``PAYMENT-SIGNATURE`` header (x402 v2 only)."""
    try:
        data = decode_json(value, PAYMENT_SIGNATURE)
        if data.get("x402Version", 2) != 2:
            raise ValueError(f"{PAYMENT_SIGNATURE} is not x402 version 2")
        payload = PaymentPayload.model_validate(data)
    except ValidationError as exc:
        raise PaymentRequiredError(
            f"{PAYMENT_SIGNATURE} is not an x402 payment payload: {_first(exc)}",
            reason="invalid_payload",
        ) from None
    except ValueError as exc:
        raise PaymentRequiredError(str(exc), reason="invalid_payload") from None
    return payload


def decode_payment_required(value: str) -> PaymentRequired:
    try:
        return PaymentRequired.model_validate(decode_json(value, PAYMENT_REQUIRED))
    except (ValueError, ValidationError) as exc:
        raise PaymentError(f"the node's {PAYMENT_REQUIRED} header is invalid: {exc}") from None


def decode_settle_response(value: str) -> SettleResponse:
    try:
        return SettleResponse.model_validate(decode_json(value, PAYMENT_RESPONSE))
    except (ValueError, ValidationError) as exc:
        raise PaymentError(f"the node's {PAYMENT_RESPONSE} header is invalid: {exc}") from None


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid"))
