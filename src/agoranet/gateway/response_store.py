"""Responses kept for ``previous_response_id`` and ``GET /v1/responses/{id}``: bounded,
in memory, each visible only to the gateway key that created it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from agoranet.errors import InvalidRequestError, ModelNotFoundError

__all__ = ["DEFAULT_CAPACITY", "ResponseNotFoundError", "ResponseStore", "StoredResponse"]

DEFAULT_CAPACITY: Final = 1024


class ResponseNotFoundError(ModelNotFoundError):
    """No stored response has that id (or it belongs to another key): a 404."""

    code = "response_not_found"


@dataclass(frozen=True)
class StoredResponse:
    owner: str | None  # the gateway key's name; None on an open gateway
    response: dict[str, Any]  # the response object as returned
    messages: list[dict[str, Any]]  # the conversation up to and including its answer


class ResponseStore:
    """The last ``capacity`` stored responses; the oldest go first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, stored: StoredResponse) -> None:
        with self._lock:
            self._items[stored.response["id"]] = stored
            self._items.move_to_end(stored.response["id"])
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, ident: str, owner: str | None) -> StoredResponse:
        with self._lock:
            stored = self._items.get(ident)
        if stored is None or stored.owner != owner:
            raise ResponseNotFoundError(f"no stored response with id '{ident}'")
        return stored

    def history(self, ident: str, owner: str | None) -> list[dict[str, Any]]:
        """The conversation a request continues with ``previous_response_id: ident``."""
        try:
            return [dict(m) for m in self.get(ident, owner).messages]
        except ResponseNotFoundError:
            raise InvalidRequestError(f"previous response with id '{ident}' not found (it "
                                      "was not stored, or is too old)",
                                      param="previous_response_id") from None

    def delete(self, ident: str, owner: str | None) -> None:
        self.get(ident, owner)
        with self._lock:
            self._items.pop(ident, None)

    def __len__(self) -> int:
        return len(self._items)
