"""``/v1/adapters``: upload a LoRA adapter to a node, and list one's own.

An adapter belongs to whoever uploaded it (or had it trained on this node): see
:mod:`agoranet.node.adapter_owners`. ``POST`` takes a bearer token to name the
owner, or makes one and returns it once as ``owner_token``; ``GET`` needs the
bearer token (401 without) and lists only that owner's adapters. Serving an
adapter needs only its id (its model name), as before; ``?public=true`` at upload
also lists it in the node's ``/v1/models``, ``?private=true`` serves it to its
owners alone (:mod:`agoranet.node.adapter_access`). ``POST /v1/adapters/{id}``
with ``{"public": bool, "private": bool}`` changes those flags later, by an owner
(anyone else gets the 404 of a missing adapter).

On a paid node with a storage price an upload is paid
(:mod:`agoranet.node.upload_payments`): the archive is checked first (a 400 costs
nothing), then paid like a chat request (402 without payment, nothing stored), and
the address that signed the payment owns the adapter too.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.engines.adapters import AdapterHost
from agoranet.errors import AdapterError, InvalidRequestError, PaymentRequiredError
from agoranet.node.adapter_access import missing_adapter
from agoranet.node.adapter_owners import AdapterOwners, owner_id, owner_token, payer_owner
from agoranet.node.finetune_routes import owner_of
from agoranet.node.routes import openai_errors, read_json
from agoranet.request_ids import REQUEST_ID_HEADER
from agoranet.request_ids import request_id as checked_request_id
from agoranet.tuning.adapter import Adapter, adapter_model_name, unpack_adapter

if TYPE_CHECKING:
    from agoranet.node.upload_payments import UploadPayments

__all__ = ["adapter_card", "adapter_routes"]


def adapter_card(adapter: Adapter, base_name: str,
                 owners: AdapterOwners | None = None) -> dict[str, object]:
    flags: dict[str, object] = {}
    if owners is not None:
        flags = {"public": owners.is_public(adapter.id), "private": owners.is_private(adapter.id)}
    return {**flags,
        "object": "adapter",
        "id": adapter.id,
        "model": adapter_model_name(base_name, adapter.id),
        "base_model": adapter.manifest.base_model,
        "base_model_sha256": adapter.manifest.base_model_sha256,
        "rank": adapter.manifest.rank,
        "created": adapter.manifest.created,
    }


def _flag(text: str | None, name: str) -> bool:
    if text is None or text.lower() in ("false", "0"):
        return False
    if text.lower() in ("true", "1"):
        return True
    raise InvalidRequestError(f"{name} must be true or false, not {text[:40]!r}", param=name)


def adapter_routes(host: AdapterHost, base_name: str, max_bytes: int,
                   owners: AdapterOwners, payments: UploadPayments | None = None) -> list[Route]:
    """The routes; with ``payments`` (a paid node with a storage price) uploads are paid."""
    paid = payments is not None and payments.price_per_mb > 0

    @openai_errors
    async def upload(request: Request) -> Response:
        token = None
        if request.headers.get("authorization"):
            owner = owner_of(request)  # a malformed header is a 401, not an anonymous upload
        else:
            token = owner_token()
            owner = owner_id(token)
        public = _flag(request.query_params.get("public"), "public")
        private = _flag(request.query_params.get("private"), "private")
        _one_of(public, private)
        archive = await request.body()
        expected = request.query_params.get("id")
        if paid or expected:  # a bad archive or id is a 400 before anything is paid or kept
            ident = await asyncio.to_thread(_checked_id, archive, max_bytes)
            if expected and expected != ident:
                raise InvalidRequestError(
                    f"the uploaded adapter's id is {ident}, not the {expected} you named")
        auth = None
        if paid:
            assert payments is not None
            request_id = checked_request_id(request.headers.get(REQUEST_ID_HEADER))  # bad: 400
            try:
                auth = await payments.authorize(request.headers.get("payment-signature"),
                                                len(archive), request_id)
                await payments.settle(auth)
            except PaymentRequiredError as exc:
                return payments.required_response(len(archive), exc, str(request.url))
        try:
            adapter = await asyncio.to_thread(host.add_adapter, archive, max_bytes)
        except BaseException as exc:
            if auth is not None and payments is not None:
                await payments.release(auth)  # not stored: nothing charged
            if isinstance(exc, AdapterError):
                raise InvalidRequestError(str(exc)) from exc
            raise
        headers = {}
        if auth is not None and payments is not None:
            headers = await payments.charge(auth, len(archive))
            await asyncio.to_thread(owners.add, adapter.id, payer_owner(auth.signer))
        await asyncio.to_thread(owners.add, adapter.id, owner)
        if public or private:
            await asyncio.to_thread(owners.set_flags, adapter.id, public=public,
                                    private=private)
        card = adapter_card(adapter, base_name, owners)
        if token is not None:
            card["owner_token"] = token  # shown once: the bearer token that lists it
        return JSONResponse(card, status_code=201, headers=headers)

    @openai_errors
    async def listing(request: Request) -> Response:
        mine = await asyncio.to_thread(owners.owned_by, owner_of(request))
        cards = [adapter_card(a, base_name, owners) for a in host.list_adapters()
                 if a.id in mine]
        return JSONResponse({"object": "list", "data": cards})

    @openai_errors
    async def change(request: Request) -> Response:
        """An owner marks its adapter public or private (or neither)."""
        ident = request.path_params["adapter_id"]
        owner = owner_of(request)
        found = [a for a in host.list_adapters() if a.id == ident]
        if not found or owner not in await asyncio.to_thread(owners.owners, ident):
            raise missing_adapter(ident)  # another's adapter: as if it did not exist
        body = await read_json(request)
        unknown = set(body) - {"public", "private"}
        if unknown:
            raise InvalidRequestError(f"unknown field {sorted(unknown)[0]!r}: send public "
                                      "and/or private", param=sorted(unknown)[0])
        flags: dict[str, bool | None] = {}
        for name in ("public", "private"):
            value = body.get(name)
            if value is not None and not isinstance(value, bool):
                raise InvalidRequestError(f"{name} must be true or false", param=name)
            flags[name] = value
        public = flags["public"] if flags["public"] is not None else owners.is_public(ident)
        private = flags["private"] if flags["private"] is not None else \
            owners.is_private(ident)
        _one_of(public, private)
        await asyncio.to_thread(owners.set_flags, ident, public=public, private=private)
        return JSONResponse(adapter_card(found[0], base_name, owners))

    return [
        Route("/v1/adapters", upload, methods=["POST"]),
        Route("/v1/adapters", listing, methods=["GET"]),
        Route("/v1/adapters/{adapter_id}", change, methods=["POST"]),
    ]


def _checked_id(archive: bytes, max_bytes: int) -> str:
    """The id of the adapter in ``archive``, checked as an upload is (a 400 if bad), in a
    scratch directory: nothing is kept."""
    with tempfile.TemporaryDirectory(prefix="agoranet-upload-") as scratch:
        try:
            return unpack_adapter(archive, Path(scratch), max_bytes).id
        except AdapterError as exc:
            raise InvalidRequestError(str(exc)) from exc


def _one_of(public: bool, private: bool) -> None:
    if public and private:
        raise InvalidRequestError("an adapter is either public (listed in /v1/models) or "
                                  "private (served to its owners alone), not both",
                                  param="private")
