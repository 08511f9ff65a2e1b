"""What an audit cost: an ``httpx.Auth`` around the node's payer that notes each answer.

The auditor asks its challenges through a plain (synchronous) httpx client; this
auth pays each through the node's :class:`~agoranet.payments.pay.httpx_auth.PayerAuth`
when it has one (a typed :class:`~agoranet.payments.pay.httpx_auth.Payment` per
challenge, :meth:`~agoranet.payments.pay.httpx_auth.PayerAuth.paying`), or sends the
request as is for a free node, and keeps, per answered challenge, its token usage
and the node's verified signed receipt (from that payment), so the audit's spend can
be logged and counted against the audit budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from agoranet.api import jsonlimits
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment

if TYPE_CHECKING:
    from agoranet.payments.receipts import Receipt

__all__ = ["AuditMeter", "Charge"]


@dataclass(frozen=True)
class Charge:
    """One answered challenge: its usage, and the receipt behind its price when paid."""

    prompt_tokens: int
    completion_tokens: int
    receipt: Receipt | None
    duration_ms: float


class AuditMeter(httpx.Auth):
    """Pays each POST through ``inner`` (None: the node is free) and records every 200
    answer; other requests (a GET of the node's offer) go out as they are."""

    requires_request_body = True

    def __init__(self, inner: PayerAuth | None) -> None:
        self.inner = inner
        self.charges: list[Charge] = []
        self._lock = threading.Lock()

    @property
    def paid(self) -> bool:
        return self.inner is not None

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        started = time.perf_counter()
        if request.method != "POST":  # reading the node's offer: nothing to pay or count
            yield request
            return
        payment = Payment()
        if self.inner is None:
            response = yield request
        else:
            flow = self.inner.paying(payment).sync_auth_flow(request)
            try:
                outgoing = next(flow)
                while True:
                    response = yield outgoing
                    try:
                        outgoing = flow.send(response)
                    except StopIteration:
                        break
            finally:
                flow.close()
        if response.status_code == 200:
            response.read()
            prompt, completion = _usage(response)
            charge = Charge(prompt, completion, payment.receipt,
                            (time.perf_counter() - started) * 1000)
            with self._lock:
                self.charges.append(charge)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise NotImplementedError("the audit meter runs in the auditor's synchronous client")
        yield request  # pragma: no cover - makes this an async generator


def _usage(response: httpx.Response) -> tuple[int, int]:
    try:
        usage: Any = jsonlimits.loads(response.content, what="an answer").get("usage") or {}
        return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    except (ValueError, AttributeError, TypeError):
        return 0, 0
