"""OpenAI's error JSON, produced here and nowhere else."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException

from agoranet.errors import AgoranetError, RequestError, UpstreamError

__all__ = ["error_body", "error_from_exception", "validation_message"]


def error_body(
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The body OpenAI returns with any error status."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """A short human message and the offending parameter for a pydantic error."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if not isinstance(p, int) or p]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    where = f"'{'.'.join(loc)}': " if loc else ""
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}{msg}{extra}", param


def error_from_exception(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Map any exception to ``(status, body, headers)``; unknown ones become 500."""
    headers: dict[str, str] = {}
    if isinstance(exc, RequestError):
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        body = error_body(exc.message, error_type=exc.error_type, param=exc.param, code=exc.code)
        return exc.status_code, body, headers
    if isinstance(exc, ValidationError):
        message, param = validation_message(exc)
        return 400, error_body(message, param=param), headers
    if isinstance(exc, HTTPException) and 400 <= exc.status_code < 500:
        # Starlette's own refusals inside a handler (e.g. a body that is not multipart)
        return exc.status_code, error_body(str(exc.detail)), headers
    if isinstance(exc, UpstreamError):
        status = exc.status_code if 400 <= exc.status_code < 600 else 502
        return status, error_body(str(exc), error_type="upstream_error"), headers
    if isinstance(exc, AgoranetError):
        return 500, error_body(str(exc), error_type="server_error"), headers
    return 500, error_body("internal server error", error_type="server_error"), headers
