"""An owner's or operator's secret in front of pages and endpoints that are theirs alone.

The dashboards (and anything else only the person running a node or a gateway may see)
sit behind a :class:`SecretGate`. A caller proves it holds the secret either with
``Authorization: Bearer <secret>`` on each request (scripts, Prometheus) or once through
the login form (:meth:`SecretGate.login`), which sets an ``HttpOnly``, ``SameSite=Strict``
session cookie holding a random token, never the secret. Anything else gets a 401 in
OpenAI's error shape. What counts as the secret is the gate's ``check``: the node's
operator secret (a file, :func:`load_or_create_secret`), the gateway's owner key.

The operator secret is not a buyer's credential: buyers never learn it and it opens no
paid route.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from agoranet.api.errors import error_body
from agoranet.errors import ConfigError

__all__ = ["COOKIE", "SecretGate", "load_or_create_secret", "matches"]

COOKIE: Final = "agoranet_session"
_MAX_SESSIONS: Final = 256

Handler = Callable[[Request], Awaitable[Response]]


def load_or_create_secret(path: Path) -> str:
    """The secret kept in ``path``; a new random one is written there first (mode 0600)
    if the file does not exist. Two processes starting at once agree on one secret."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = "ops-" + secrets.token_urlsafe(32)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process wrote it meanwhile: theirs holds
            return load_or_create_secret(path)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secret + "\n")
        return secret
    except OSError as exc:
        raise ConfigError(f"cannot read the operator secret {path}: {exc.strerror}") from exc
    if len(text) < 16:
        raise ConfigError(f"the operator secret in {path} is shorter than 16 characters")
    return text


def matches(secret: str) -> Callable[[str], bool]:
    """A ``check`` for :class:`SecretGate` accepting exactly ``secret`` (constant time)."""
    expected = secret.encode()
    return lambda given: hmac.compare_digest(given.encode(), expected)


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


class SecretGate:
    """Lets through requests that hold the secret ``check`` accepts; ``check`` None means
    the gate is open (a gateway started ``--open`` has no owner key)."""

    def __init__(self, check: Callable[[str], bool] | None, *, realm: str = "agoranet") -> None:
        self._check = check
        self.realm = realm
        self._sessions: dict[str, None] = {}  # insertion order: the oldest goes first
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self._check is None

    def allows(self, request: Request) -> bool:
        """Whether ``request`` holds the secret (its bearer header or a session cookie)."""
        if self._check is None:
            return True
        given = _bearer(request)
        if given is not None and self._check(given):
            return True
        token = request.cookies.get(COOKIE)
        if not token:
            return False
        with self._lock:
            return any(hmac.compare_digest(token, held) for held in self._sessions)

    def denied(self) -> Response:
        """The 401 of a request without the secret (nothing about the secret in it)."""
        body = error_body(f"this page is the {self.realm}'s own: send 'Authorization: Bearer "
                          "<secret>' or log in at /login", error_type="authentication_error",
                          code="invalid_api_key")
        return JSONResponse(body, status_code=401,
                            headers={"WWW-Authenticate": f'Bearer realm="{self.realm}"'})

    def require(self, handler: Handler) -> Handler:
        """``handler`` behind the gate."""
        async def gated(request: Request) -> Response:
            if not self.allows(request):
                return self.denied()
            return await handler(request)
        return gated

    async def login(self, request: Request) -> Response:
        """``POST`` form field ``secret``: a session cookie and back to ``/``, or a 401."""
        form = await request.form()
        given = form.get("secret")
        if self._check is not None and not (isinstance(given, str) and given.strip()
                                            and self._check(given.strip())):
            return self.denied()
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[token] = None
            while len(self._sessions) > _MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    async def logout(self, request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        with self._lock:
            self._sessions.pop(token or "", None)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response
