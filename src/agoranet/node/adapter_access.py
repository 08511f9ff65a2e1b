"""Private adapters: served to their owners alone, a 404 for anyone else.

An owner marks an adapter private (at upload, ``?private=true``, or later with
``POST /v1/adapters/{id}``; see :mod:`agoranet.node.adapter_routes`). A request for
``BASE@adapter:<id>`` of a private adapter is then served only to a caller that
names one of its owners (:mod:`agoranet.node.adapter_owners`):

- by its bearer token (its SHA-256 is the owner), on any node;
- on a paid node, by the address that signs its payment (``payer:0x...``, recorded
  when that address paid for the upload). :class:`AdapterAccess` runs before the
  payment and lets such a request on only if the payment header *claims* an owner's
  address; :class:`PaidAdapterAccess` runs after the payment was accepted and
  checks the address the payment middleware proved
  (:data:`~agoranet.node.payment_middleware.PAYER_SCOPE_KEY`). A refusal after the
  payment ends the request with a 404 before any inference, so the payment is
  released and nothing is charged.

Anyone else gets exactly what a missing adapter gets (404 ``model_not_found``, the
same message), so a private adapter's existence is not revealed, and a gateway does
not hold it against the node (a missing model is the buyer's mistake).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from agoranet.api.asgi_body import read_body, replay_body
from agoranet.api.errors import error_from_exception
from agoranet.api.jsonlimits import loads_object
from agoranet.errors import AgoranetError, ModelNotFoundError
from agoranet.market import ADAPTER_SEPARATOR, ModelName
from agoranet.node.adapter_owners import AdapterOwners, owner_id, payer_owner

__all__ = ["AdapterAccess", "PaidAdapterAccess", "claimed_payer", "missing_adapter"]

_PENDING = "agoranet.adapter_owners"  # owners the paying address must be among


def missing_adapter(ident: str) -> ModelNotFoundError:
    """The error a missing adapter gets (the engine's own words)."""
    return ModelNotFoundError(
        f"adapter {ident} is not on this node; upload it with POST /v1/adapters", param="model")


def claimed_payer(header: str | None) -> str | None:
    """The address a ``PAYMENT-SIGNATURE`` header says signs it (not checked here)."""
    if not header:
        return None
    # Only paid nodes call this: the payment modules need the optional 'chain' extra.
    from agoranet.payments import x402wire
    from agoranet.payments.accept.verifier import parse_voucher

    try:
        payment = x402wire.decode_payment_payload(header)
        if payment.accepted.scheme == "exact":
            return str(payment.payload["authorization"]["from"])
        return parse_voucher(payment.payload).config.payer_authorizer
    except (AgoranetError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _bearer_owner(headers: dict[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return owner_id(token) if scheme.lower() == "bearer" and token.strip() else None


async def _refuse(send: Send, ident: str) -> None:
    status, body, _ = error_from_exception(missing_adapter(ident))
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def _requested_adapter(body: bytes) -> str | None:
    """The adapter id a request body names, if any (a bad body is left to the routes)."""
    if ADAPTER_SEPARATOR.encode() not in body:
        return None
    try:
        model = loads_object(body, max_bytes=None).get("model")
        return ModelName.parse(model).adapter if isinstance(model, str) else None
    except (AgoranetError, ValueError):
        return None


class AdapterAccess:
    """Before payment: a private adapter's request goes on only if it names an owner."""

    def __init__(self, app: ASGIApp, *, owners: AdapterOwners, paths: Iterable[str],
                 paid: bool) -> None:
        self.app = app
        self.owners = owners
        self.paths = frozenset(paths)
        self.paid = paid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or \
                scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        replay = replay_body(body, receive)
        ident = _requested_adapter(body)
        if ident is None or not self.owners.is_private(ident):
            await self.app(scope, replay, send)
            return
        owners = self.owners.owners(ident)
        headers = _headers(scope)
        if _bearer_owner(headers) in owners:
            await self.app(scope, replay, send)
            return
        claimed = claimed_payer(headers.get("payment-signature")) if self.paid else None
        if claimed is not None and payer_owner(claimed) in owners:
            # Its payment will prove the address: PaidAdapterAccess checks it then.
            await self.app({**scope, _PENDING: (ident, owners)}, replay, send)
            return
        await _refuse(send, ident)


class PaidAdapterAccess:
    """After payment: a request let on by its claimed address pays from that address."""

    def __init__(self, app: ASGIApp) -> None:
        from agoranet.node.payment_middleware import PAYER_SCOPE_KEY  # needs 'chain' extra

        self.app = app
        self.payer_key = PAYER_SCOPE_KEY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pending = scope.get(_PENDING) if scope["type"] == "http" else None
        if pending is not None:
            ident, owners = pending
            payer = scope.get(self.payer_key)
            if not payer or payer_owner(str(payer)) not in owners:
                await _refuse(send, ident)  # before inference: the payment is released
                return
        await self.app(scope, receive, send)
