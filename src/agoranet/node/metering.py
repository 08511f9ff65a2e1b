"""What a paid request's generation is metered with, passed explicitly (no ambient state).

The node's paid inference (:mod:`agoranet.node.paid_inference`) parses and prepares a
paid request once, accepts its payment, and hands the app below the payment middleware
a :class:`MeteredRequest` in the request's ASGI scope (:data:`METERED_SCOPE_KEY`): the
parsed request, the prepared one and the :class:`Metering` of this request. The routes
take it from there (:func:`metered_request`) instead of reading and tokenising the body
again, and pass the prepared request and the metering to the service as arguments. The
service records the usage in the metering when generation finishes, asks it for
running-receipt frames as content frames go out (``stream_progress``, given how many
were sent), and for the final SSE frames (the signed receipt) before ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from agoranet.api.handlers import read_json
from agoranet.api.types import log_unknown_fields
from agoranet.engines.base import Finish, Prepared

__all__ = ["METERED_SCOPE_KEY", "MeteredRequest", "Metering", "metered_request",
           "route_request"]

FinishFrames = Callable[[Finish], Awaitable[list[bytes]]]
ProgressFrames = Callable[[int], Awaitable[list[bytes]]]
_R = TypeVar("_R")
_M = TypeVar("_M", bound=BaseModel)

METERED_SCOPE_KEY = "agoranet.metered"  # the MeteredRequest of a paid request, in its scope


@dataclass
class Metering:
    """One request's meter: the usage generation reports, and the payment's frames."""

    usage: Finish | None = None
    stream_finish: FinishFrames | None = None
    stream_progress: ProgressFrames | None = None


@dataclass(frozen=True)
class MeteredRequest:
    """A request parsed and prepared once (to price it), and the metering it runs with."""

    request: Any  # the parsed wire request (chat, completion or embeddings)
    prepared: Prepared
    metering: Metering


def metered_request(scope: Mapping[str, Any], kind: type[_R]
                    ) -> tuple[_R, Prepared, Metering] | None:
    """The parsed ``kind`` request, its prepared form and its metering, if the payment
    middleware left them in ``scope`` for a request of that kind; else None."""
    found = scope.get(METERED_SCOPE_KEY)
    if isinstance(found, MeteredRequest) and isinstance(found.request, kind):
        return found.request, found.prepared, found.metering
    return None


async def route_request(request: Request, kind: type[_M], route: str
                        ) -> tuple[_M, Prepared | None, Metering | None]:
    """A route's ``kind`` request with its prepared form and metering: as the payment
    middleware left them in the scope, or else parsed from the body (a free request,
    prepared by the service); unknown fields are logged under ``route``."""
    metered = metered_request(request.scope, kind)
    if metered is None:
        body, prepared, metering = kind.model_validate(await read_json(request)), None, None
    else:
        body, prepared, metering = metered
    log_unknown_fields(body, route)
    return body, prepared, metering
