"""An ``httpx.Auth`` that pays a node with a :class:`~agoranet.payments.pay.payer.Payer`.

Any httpx-based client (the ``openai`` client included, through its
``http_client``) then pays transparently: each request goes out with the next
voucher; a 402 is answered once (a larger maximum, or a resync from the node's
corrective 402, believed only as far as a receipt backs it, or a channel the node
finds unfunded checked on chain and repaired first, see
:meth:`~agoranet.payments.pay.payer.Payer.reconcile`; and
:meth:`~agoranet.payments.pay.payer.Payer.resync`, which raises
:class:`~agoranet.errors.ChargeDisputeError` otherwise); the receipt is checked from ``PAYMENT-RESPONSE`` or, for a
stream, from its final receipt event, read as the stream passes through. A
stream's running receipts are checked as they come (never more tokens than have
arrived); if the stream breaks before its final receipt, the last running one is
what the request is believed to owe, and what the node can charge for the tokens
that arrived after it is counted as spent (:meth:`~agoranet.payments.pay.payer.Payer.
cut`).
What came of a request is a typed :class:`Payment`: a caller sends its request with
``auth=auth.paying(payment)`` (:meth:`PayerAuth.paying`; the gateway's relay, the
auditor, any httpx client) to cap it (``payment.max_amount``) and to read the verified
receipt, a held voucher, and what a cut stream counted beyond its receipt, from that
object. ``auth=PayerAuth(...)`` on a whole client (an ``openai`` client's
``http_client``) pays each request within the auth's maximum, its outcome kept only in
the payer's state. No payment data crosses in httpx's ``extensions``.
Requests on one channel go one at a time (the lock is held until the receipt; an
event-loop task waits for it without polling); a request that follows one the
client hung up on may find the node still holding the channel, and is resent after
short pauses (``BUSY_RETRIES_S``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.mechanisms.evm.batch_settlement.errors import ERR_CHANNEL_BUSY

from agoranet.api import jsonlimits
from agoranet.errors import PaymentError, ReceiptError
from agoranet.payments import x402wire
from agoranet.payments.pay.payer import Payer, PendingPayment
from agoranet.payments.receipts import Receipt

__all__ = ["BUSY_RETRIES_S", "PaidRequest", "PayerAuth", "Payment"]

# Pauses before resending a payment the node refused as "channel busy" (1.3 s in all).
BUSY_RETRIES_S = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)

# A node's refusals about the channel's on-chain state: the payer checks the chain
# (Payer.reconcile) before it pays again.
_CHANNEL_STATE_ERRORS = frozenset({
    bs_errors.ERR_CHANNEL_NOT_FOUND, bs_errors.ERR_CUMULATIVE_EXCEEDS_BALANCE,
    "invalid_batch_settlement_evm_channel_withdrawing"})


@dataclass
class Payment:
    """One request's payment: the caller's cap on it, then what came of it (typed, per
    request; see :meth:`PayerAuth.paying`)."""

    max_amount: int | None = None  # the request's own maximum and hard cap (None: the auth's)
    # The verified receipt: the final one, or for a stream cut before it the last running one.
    receipt: Receipt | None = None
    # A stream cut before its final receipt: what the payer counted as spent beyond ``receipt``
    # for the tokens that arrived after it (the node may hold a receipt for them).
    unreceipted: int = 0
    held: PendingPayment | None = None  # a fine-tuning job's voucher the node holds
    pending: PendingPayment | None = None  # the voucher the request carried (None: unpaid)
    body: dict[str, Any] = field(default_factory=dict, repr=False)  # the request's JSON


class _ChannelLock:
    """One request at a time on a channel: a thread blocks on it; an event-loop task
    awaits a wake-up from the release (no polling)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._guard = threading.Lock()

    def acquire(self, blocking: bool = True) -> bool:
        return self._lock.acquire(blocking)

    async def acquire_async(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            with self._guard:  # registered before trying: a release in between wakes it
                self._waiters.append((loop, waiter))
            try:
                if self._lock.acquire(blocking=False):
                    return
                await waiter
            finally:
                with self._guard:  # (gone already if a release found its loop closed)
                    if (loop, waiter) in self._waiters:
                        self._waiters.remove((loop, waiter))

    def release(self) -> None:
        self._lock.release()
        with self._guard:
            waiters = list(self._waiters)
        for loop, waiter in waiters:  # each tries again; all but one wait once more
            try:
                loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # its loop is closed: nobody is waiting there any more
                with self._guard:
                    if (loop, waiter) in self._waiters:
                        self._waiters.remove((loop, waiter))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PayerAuth(httpx.Auth):
    """Pays each request through ``payer``; requests need a JSON body with ``model``."""

    requires_request_body = True

    def __init__(self, payer: Payer, *, max_per_request: int | None = None) -> None:
        self.payer = payer
        self.max_per_request = max_per_request or payer.max_per_request or 0
        self._lock = _ChannelLock()
        # Awaited (by an event-loop request, with the channel held) before each voucher of
        # that amount is signed: makes the deposit cover it, by a top-up on a task of its
        # own (agoranet.gateway.node_payer). Without it, or for a thread's request, the
        # payer tops up itself when it must (Payer.pay).
        self.cover: Callable[[int], Awaitable[None]] | None = None

    def paying(self, payment: Payment) -> PaidRequest:
        """The auth for one request, paid within ``payment.max_amount``; what came of it
        is filled into ``payment`` (its receipt once the answer, or its stream, is read)."""
        return PaidRequest(self, payment)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        return self._sync_flow(request, Payment())

    def async_auth_flow(self, request: httpx.Request
                        ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        return self._async_flow(request, Payment())

    def _sync_flow(self, request: httpx.Request, payment: Payment
                   ) -> Generator[httpx.Request, httpx.Response, None]:
        self._lock.acquire()
        flow = self._locked_flow(request, payment)
        try:
            step = next(flow)
            while True:
                if isinstance(step, float):  # a pause the flow asked for
                    time.sleep(step)
                    step = flow.send(None)
                elif isinstance(step, _Cover):  # left to the payer (Payer.pay)
                    step = flow.send(None)
                else:
                    step = flow.send((yield step))
        except StopIteration:
            return
        finally:
            flow.close()

    async def _async_flow(self, request: httpx.Request, payment: Payment
                          ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # The payer's state is guarded by a lock awaited without blocking the loop.
        await self._lock.acquire_async()
        flow = self._locked_flow(request, payment)
        try:
            step = next(flow)
            while True:
                if isinstance(step, float):  # a pause the flow asked for
                    await anyio.sleep(step)
                    step = flow.send(None)
                elif isinstance(step, _Cover):  # the deposit for the next voucher
                    if self.cover is not None:
                        await self.cover(step.amount)
                    step = flow.send(None)
                else:
                    step = flow.send((yield step))
        except StopIteration:
            return
        finally:
            flow.close()  # runs the flow's own finally: the lock is released on any exit

    def _locked_flow(self, request: httpx.Request, payment: Payment) -> _Flow[None]:
        """Pay, retry once on a 402, check the receipt into ``payment``; the lock (already
        held) is released here, or by the response stream once its receipt has been read."""
        released = False
        try:
            response = yield from self._flow(request, payment)
            released = self._finish(request, response, payment)
        finally:
            if not released:
                self._lock.release()

    # ------------------------------------------------------------ shared logic

    def _flow(self, request: httpx.Request, payment: Payment) -> _Flow[httpx.Response]:
        """Send ``request`` paid; yields requests to send, or pauses (seconds) to wait."""
        if request.method != "POST" or \
                not request.headers.get("content-type", "").startswith("application/json") \
                or not request.read():
            # Only JSON POSTs are paid: reads, uploads and cancels go unpaid.
            payment.pending = None
            return (yield from _send(request))
        body = _json(request)
        # A caller may set the request's own maximum (and hard cap) per request.
        cap = payment.max_amount
        amount = int(cap) if cap else self.max_per_request
        retried = False
        while True:
            pending = None
            if amount > 0:
                yield _Cover(amount)  # a top-up is awaited here, never run (see ``cover``)
                pending = self.payer.pay(amount, request.headers.get("x-request-id"))
                request.headers[x402wire.PAYMENT_SIGNATURE] = pending.header
                request.headers["x-request-id"] = pending.request_id
            payment.pending, payment.body = pending, body
            response = yield from _send(request)
            for delay in BUSY_RETRIES_S:  # the node still holds the channel for our last request
                if not _busy(response):
                    break
                yield delay
                response = yield from _send(request)
            if response.status_code != 402 or retried:
                return response
            retried = True
            header = response.headers.get(x402wire.PAYMENT_REQUIRED)
            if not header:
                return response
            required = x402wire.decode_payment_required(header)
            accept = next((a for a in required.accepts if a.scheme == "batch-settlement"), None)
            if accept is None:
                return response
            if required.error in _CHANNEL_STATE_ERRORS and self.payer.reconcile() is not None:
                request.headers.pop("x-request-id", None)  # the chain disagreed with the
                continue  # store: the channel was repaired or replaced, so pay again
            if required.error and "mismatch" in required.error and \
                    not self.payer.resync(accept.extra or {}):
                return response
            needed = int(accept.amount)
            if cap and needed > int(cap):
                return response  # the node wants more than the caller allows: its 402 stands
            amount = max(amount, needed)
            request.headers.pop("x-request-id", None)

    def _finish(self, request: httpx.Request, response: httpx.Response, payment: Payment
                ) -> bool:
        """Check the receipt into ``payment``; True if the lock will be released by the
        stream instead."""
        pending, body = payment.pending, payment.body
        if pending is None or response.status_code != 200:
            return False
        terms = _Terms(str(body.get("model", "")), _completion_limit(request, body),
                       bool((body.get("agoranet") or {}).get("commitments")))
        header = response.headers.get(x402wire.PAYMENT_RESPONSE)
        if header:
            try:
                settle = x402wire.decode_json(header, x402wire.PAYMENT_RESPONSE)
            except ValueError as exc:
                raise PaymentError(f"the node's {x402wire.PAYMENT_RESPONSE} header is invalid: "
                                   f"{exc}") from None
            extra = settle.get("extra")
            if isinstance(extra, dict) and extra.get("held"):  # a fine-tuning job's voucher
                self.payer.hold(pending, settle)  # until the job ends (Payer.settle_job)
                payment.held = pending
                return False
            payment.receipt = self.payer.settle(
                pending, settle, terms.model, max_tokens=terms.max_tokens,
                commitments=terms.commitments)
            return False
        if "text/event-stream" not in response.headers.get("content-type", ""):
            raise PaymentError("the node answered a paid request without a receipt")
        response.stream = _ReceiptTap(response.stream, self, pending, terms, payment)
        return True


class PaidRequest(httpx.Auth):
    """The auth of one request paid through a :class:`PayerAuth`: what came of it is in
    ``payment``."""

    requires_request_body = True

    def __init__(self, auth: PayerAuth, payment: Payment) -> None:
        self.auth, self.payment = auth, payment

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        return self.auth._sync_flow(request, self.payment)

    def async_auth_flow(self, request: httpx.Request
                        ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        return self.auth._async_flow(request, self.payment)


@dataclass(frozen=True)
class _Terms:
    """What a receipt is checked against, from the request's body."""

    model: str
    max_tokens: int | None
    commitments: bool


class _ReceiptTap(httpx.AsyncByteStream, httpx.SyncByteStream):
    """Passes a stream through, finds the receipt event, checks it into ``payment``, then
    frees the lock."""

    def __init__(self, inner: Any, auth: PayerAuth, pending: PendingPayment, terms: _Terms,
                 payment: Payment) -> None:
        self.inner, self.auth, self.pending = inner, auth, pending
        self.terms, self.payment = terms, payment
        self.buffer = b""
        self.chunks = 0
        self.done = False
        self.final = False
        self.running: Receipt | None = None  # the last running receipt, until the final one
        self.usage: tuple[int, int] | None = None  # the answer's (prompt, completion) tokens

    def _scan(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            text = event.decode("utf-8", "replace").removeprefix("data: ")
            if not text.startswith("{"):
                continue
            try:
                obj = jsonlimits.loads_object(text, what="an SSE event")
            except ValueError:
                continue
            kind = obj.get("object")
            self.usage = _usage(obj) or self.usage
            if kind == "agoranet.receipt":
                settle = _payment_response(obj)  # none: the stream is cut before its receipt
                self.final = True
                self.payment.receipt = self.auth.payer.settle(
                    self.pending, settle, self.terms.model,
                    max_tokens=self.terms.max_tokens, min_tokens_out=self.chunks,
                    commitments=self.terms.commitments)
            elif kind == "agoranet.receipt.running":
                receipt = self.auth.payer.check(
                    self.pending, _payment_response(obj), self.terms.model,
                    max_tokens=self.terms.max_tokens, max_tokens_out=self.chunks,
                    commitments=self.terms.commitments)
                if self.running is not None and receipt.amount < self.running.amount:
                    raise ReceiptError(f"running receipt {receipt.request_id} went down")
                self.running = receipt
            elif isinstance(choices := obj.get("choices"), list) and \
                    any(_has_text(c) for c in choices):
                self.chunks += 1

    def _release(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            if not self.final:  # broken off: what was receipted, and what arrived after it
                self.payment.unreceipted = self.auth.payer.cut(
                    self.pending, self.running, self.terms.model, arrived=self.chunks,
                    usage=self.usage, max_tokens=self.terms.max_tokens,
                    commitments=self.terms.commitments)
                if self.running is not None:
                    self.payment.receipt = self.running
        finally:
            self.auth._lock.release()

    def __iter__(self) -> Iterator[bytes]:
        try:
            for data in self.inner:
                self._scan(data)
                yield data
        finally:
            self._release()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for data in self.inner:
                self._scan(data)
                yield data
        finally:
            self._release()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self._release()

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self._release()


_T = TypeVar("_T")
# A payment flow: yields a request to send (and gets its response) or a pause in seconds.
_Flow = Generator["httpx.Request | float | _Cover", "httpx.Response | None", _T]


@dataclass(frozen=True)
class _Cover:
    """A step of the flow: the deposit must cover a voucher for ``amount`` more."""

    amount: int


def _send(request: httpx.Request) -> _Flow[httpx.Response]:
    response = yield request
    assert response is not None  # a request is always answered with its response
    return response


def _busy(response: httpx.Response) -> bool:
    """A 402 because the node still holds the channel for our previous request (it has
    not yet seen that we hung up): the same payment goes again after a pause."""
    if response.status_code != 402:
        return False
    header = response.headers.get(x402wire.PAYMENT_REQUIRED)
    try:
        return bool(header) and x402wire.decode_payment_required(header).error == ERR_CHANNEL_BUSY
    except PaymentError:
        return False


def _completion_limit(request: httpx.Request, body: dict[str, Any]) -> int | None:
    """The most tokens the node may charge for, as the node reads the body: a chat request's
    ``max_completion_tokens`` or ``max_tokens``; a completion's ``max_tokens`` (its
    ``max_completion_tokens`` is no field of OpenAI's completions, and the node ignores it)."""
    if request.url.path.endswith("/chat/completions"):
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
    else:
        limit = body.get("max_tokens")
    return limit if type(limit) is int else None


def _payment_response(event: dict[str, Any]) -> dict[str, Any]:
    """The payment response a receipt event carries (ReceiptError if it carries none)."""
    response = event.get("x402_payment_response")
    if not isinstance(response, dict):
        raise ReceiptError("the node's receipt event has no payment response")
    return response


def _usage(event: dict[str, Any]) -> tuple[int, int] | None:
    """The (prompt, completion) tokens of an event's usage, if it carries counts."""
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return None
    counts = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not all(type(n) is int and n >= 0 for n in counts):
        return None
    return int(usage["prompt_tokens"]), int(usage["completion_tokens"])


def _has_text(choice: dict[str, Any]) -> bool:
    """Whether a stream frame carries a token: text, a piece of a tool call, or (with
    logprobs) a token whose text is empty -- half a multi-byte character -- which the
    node counts all the same."""
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta") or {}
    logprobs = choice.get("logprobs") or {}
    if not isinstance(delta, dict) or not isinstance(logprobs, dict):
        return False
    return bool(delta.get("content") or delta.get("tool_calls") or choice.get("text")
                or logprobs.get("content") or logprobs.get("tokens"))


def _json(request: httpx.Request) -> dict[str, Any]:
    try:
        data = jsonlimits.loads(request.content or b"{}", what="the request body")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
