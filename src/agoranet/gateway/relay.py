"""Streaming a chat answer from ranked nodes, failing over mid-answer.

A node that refuses, times out or errors before its first token is skipped with
nothing charged. A node that dies mid-stream is replaced: the next node gets
the original messages plus the text already streamed as a partial assistant
message (``continue_final_message``), so the client sees one uninterrupted
answer. Every node that produced tokens gets a spend-log row, with the signed
receipt behind its charge when it is paid (for a node that died mid-answer, the
last running receipt it sent, and a row ``unreceipted`` for what the payer counted
for the tokens that arrived after it: the node may have recorded a receipt for them
that it never sent); failing nodes are banned for a growing time.
A refusal that is not the node's fault is skipped without counting against it: a
request every node would refuse goes back to the client (400/413/422), a model or
adapter the node does not have (404) and a node the gateway cannot pay (no wallet,
no channel) are left for the next node, and if none answers the client is told why
(404, 402 or 503) without internal names.
A constrained answer (a forced or ``auto`` tool call, a JSON ``response_format``) is
not continued: a node's grammar cannot take over half a call or half a JSON object
from another node, so each node's answer is held back until that node has finished
it, then passed on unchanged (its tool-call deltas as the node sent them). A node
that fails before the end is replaced by the next, which answers from the start;
the client gets one whole answer (streamed in one burst at its end), never two
halves, and the failed node is paid what it receipted, as for text.
With ``policy.commitments`` every node is asked for TOPLOC-style commitments to
its part of the answer (for a continuation, its prompt includes the text already
streamed), and they are collected per node.
A token without text (the end's) is passed on when it has logprobs, as a piece of no
text. Text completions are relayed the same way, given their
:class:`~agoranet.gateway.wire.Wire` (the next node gets the prompt and the text so far).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from agoranet.api import jsonlimits
from agoranet.api.sse import iter_sse_data
from agoranet.errors import (
    AgoranetError,
    CannotPayError,
    InvalidJSONError,
    NodesDeclinedError,
    PaymentError,
    ReceiptError,
    RequestError,
    UpstreamError,
)
from agoranet.gateway.budget import BudgetExceededError, Reservation, Reserver
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.policy import Policy
from agoranet.gateway.ranking import Candidate, expected_cost, is_adapter
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.gateway.wire import Wire
from agoranet.payments.receipts import Receipt
from agoranet.registry.offer import ModelOffer

if TYPE_CHECKING:
    from agoranet.payments.pay.httpx_auth import PaidRequest

__all__ = ["Piece", "Relay", "RelayResult", "new_request_id"]


class _NodeFailed(Exception):
    pass


class _ClientFault(RequestError):
    """The node refused the request itself (4xx): every node would, so tell the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status


class _NotTheNode(Exception):
    """A refusal that is not the node's fault, so it is skipped and not counted against it:
    it does not serve what was asked (404: another node may), or the gateway cannot pay
    it. ``status``, ``code`` and the message are what the client gets if no node answers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _cannot_pay(node: NodeState, exc: Exception) -> _NotTheNode:
    return _NotTheNode(503, "cannot_pay", f"the gateway cannot pay the node at {node.url}: {exc}")


def _unpayable(url: str) -> _NotTheNode:
    return _NotTheNode(402, "payment_required",
                       f"the node at {url} sells for payment and this gateway has no wallet to "
                       "pay it: start the gateway with --keystore and --rpc-url (and a "
                       "--deposit), or allow only free nodes")


@dataclass
class Piece:
    """Text (or tool-call deltas, in OpenAI's streaming shape) for the client; ``node``
    says who produced it."""

    text: str
    node: str
    logprobs: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None


@dataclass
class RelayResult:
    request_id: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    amount: int = 0
    nodes: list[str] = field(default_factory=list)
    failovers: int = 0
    # With ``policy.commitments``: each node's commitments for its part of the answer.
    commitments: list[dict[str, Any]] = field(default_factory=list)
    key: str | None = None  # the gateway key that asked (None: an --open gateway)


@dataclass
class _Segment:
    node: NodeState
    started: float
    first_token: float | None = None
    tokens: int = 0
    usage: dict[str, int] | None = None
    finish: str | None = None
    charged: int | None = None  # from the node's signed receipt, when paid
    receipt: Receipt | None = None
    commitments: dict[str, Any] | None = None  # when asked for
    paid: bool = False  # paid through a channel: only a receipt says what was spent
    # A paid stream cut before its final receipt: what the payer counted as spent for the
    # tokens that arrived after its last receipt (the node may hold a receipt for them).
    unreceipted: int = 0


def _continuation(body: dict[str, Any], produced: str, tokens_done: int) -> dict[str, Any]:
    """The request for the next node: the answer so far as a partial assistant message."""
    if not produced:
        return body
    messages = list(body["messages"])
    if body.get("continue_final_message") and messages and messages[-1]["role"] == "assistant":
        messages[-1] = {**messages[-1], "content": str(messages[-1].get("content") or "") + produced}
    else:
        messages.append({"role": "assistant", "content": produced})
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    follow = {**body, "messages": messages, "continue_final_message": True,
              "add_generation_prompt": False}
    if limit is not None:
        follow.pop("max_completion_tokens", None)
        follow["max_tokens"] = max(1, int(limit) - tokens_done)
    return follow


async def _segment_events(client: httpx.AsyncClient, segment: _Segment, body: dict[str, Any],
                          policy: Policy, paid: PaidRequest | None, wire: Wire | None = None
                          ) -> AsyncGenerator[Piece, None]:
    url = _parsed(segment.node.url + (wire.path if wire is not None else "/chat/completions"))
    try:
        async with client.stream("POST", url, json=body,
                                 auth=paid or httpx.USE_CLIENT_DEFAULT) as response:
            if response.status_code != 200:
                await response.aread()
                message = _error_message(response)
                if response.status_code in (400, 413, 422):
                    raise _ClientFault(response.status_code, message)
                if response.status_code == 404:  # not served there; another node may
                    raise _NotTheNode(404, "model_not_found", message)
                if response.status_code == 402 and paid is None:
                    raise _unpayable(segment.node.url)
                raise _NodeFailed(f"HTTP {response.status_code}: {message}")
            async for piece in _pieces(segment, iter_sse_data(response), policy, wire):
                yield piece
    finally:
        # Set by the payer once the stream is over: the final receipt, or the last
        # running one if the stream broke off (the node is owed what it receipted).
        if paid is not None:
            segment.receipt = paid.payment.receipt
            segment.unreceipted = paid.payment.unreceipted
            if segment.receipt is not None:
                segment.charged = int(segment.receipt.amount)
    if paid is not None and segment.receipt is None:
        raise _NodeFailed("a paid answer came without a receipt")
    if segment.finish is None:
        raise _NodeFailed("stream ended before the answer did")


@functools.lru_cache(maxsize=4096)
def _parsed(url: str) -> httpx.URL:
    """A node's endpoint, parsed once (httpx parses a string on every request)."""
    return httpx.URL(url)


async def _pieces(segment: _Segment, lines: AsyncIterator[str],
                  policy: Policy, wire: Wire | None = None) -> AsyncGenerator[Piece, None]:
    """The content tokens of the node's events, each within its deadline.

    The first token is due ``first_token_timeout_s`` after the answer's headers, every
    later one ``token_timeout_s`` after the client took the one before. Only content is
    progress: keep-alive comments, empty events and usage do not move a deadline.
    """
    since = time.perf_counter()
    while True:
        first = segment.first_token is None
        wait = policy.first_token_timeout_s if first else policy.token_timeout_s
        try:  # asyncio's own timer: a tenth of anyio's cost per event, on the hot path
            async with asyncio.timeout(max(0.0, since + wait - time.perf_counter())):
                data = await anext(lines)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            if policy.own_deadlines:  # the request's own deadline: not the node's fault
                what = "first token" if first else "next token"
                raise _NotTheNode(504, "request_deadline", f"no {what} within the deadline "
                                  f"this request set ({wait:g} s)") from exc
            raise _NodeFailed("no first token in time" if first else
                              f"stalled: no token for {wait:g} s") from exc
        try:
            chunk = jsonlimits.loads_object(data, what="an SSE event")
        except InvalidJSONError as exc:
            raise _NodeFailed(str(exc)) from None
        if wire is not None:  # another endpoint's event, read as a chat chunk
            chunk = wire.as_chat_chunk(chunk)
        _check_event(chunk)
        segment.usage = chunk.get("usage") or segment.usage
        segment.commitments = (chunk.get("agoranet") or {}).get("commitments") or \
            segment.commitments
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text, calls = delta.get("content"), delta.get("tool_calls")
            if text or calls:
                segment.first_token = segment.first_token or time.perf_counter()
                segment.tokens += 1
                yield Piece(text or "", segment.node.url, choice.get("logprobs"), calls or None)
                since = time.perf_counter()  # a client slow to read is not a stalled node
            elif choice.get("logprobs"):  # a token without text (the end's): its logprobs
                yield Piece("", segment.node.url, choice["logprobs"])
            segment.finish = choice.get("finish_reason") or segment.finish


def _check_event(chunk: dict[str, Any]) -> None:
    """A node's stream event of the shape a chat chunk has, or the node failed: an error
    event, or fields of the wrong type (text that is not a string, usage not counts)."""
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise _NodeFailed(f"error mid-stream: {str(message)[:300]}")
    usage, extension, choices = chunk.get("usage"), chunk.get("agoranet"), chunk.get("choices")
    wrong = [name for name, value, kind in (("usage", usage, dict), ("agoranet", extension, dict),
                                            ("choices", choices, list))
             if value is not None and not isinstance(value, kind)]
    if isinstance(usage, dict):
        wrong += [f"usage.{k}" for k in ("prompt_tokens", "completion_tokens")
                  if k in usage and (type(usage[k]) is not int or usage[k] < 0)]
    for choice in choices if isinstance(choices, list) else []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or not isinstance(delta, dict | None) or \
                not isinstance(choice.get("logprobs"), dict | None) or \
                not isinstance(choice.get("finish_reason"), str | None) or \
                not isinstance((delta or {}).get("content"), str | None) or \
                not _call_deltas_ok((delta or {}).get("tool_calls")):
            wrong.append("choices")
    if wrong:
        raise _NodeFailed(f"an SSE event has fields of the wrong type: {', '.join(wrong)}")


def _call_deltas_ok(calls: object) -> bool:
    """Tool-call deltas of OpenAI's streaming shape (or none): each with an integer
    ``index`` and a ``function`` whose ``name``, ``arguments`` and the ``id`` are strings."""
    if calls is None:
        return True
    if not isinstance(calls, list):
        return False
    for call in calls:
        if not isinstance(call, dict) or type(call.get("index")) is not int or \
                not isinstance(call.get("id"), str | None) or \
                not isinstance(call.get("type"), str | None):
            return False
        function = call.get("function")
        if not isinstance(function, dict) or \
                not isinstance(function.get("name"), str | None) or \
                not isinstance(function.get("arguments"), str | None):
            return False
    return True


def _error_message(response: httpx.Response) -> str:
    try:
        return str(jsonlimits.loads(response.content, what="an error body")["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


@dataclass
class _Attempt:
    """One node asked for (the rest of) the answer; it owns its budget reservation.

    The relay registers an attempt the moment its reservation is taken and, on every
    way out of the request (an answer, a failure, a client hanging up), finishes it
    exactly once: :meth:`close` ends its stream, then the reservation is released.
    """

    node: NodeState
    model: ModelOffer
    reservation: Reservation
    segment: _Segment
    events: AsyncGenerator[Piece, None]
    failed: str | None = None
    declined: _NotTheNode | None = None  # failed for a reason not the node's own
    closed: bool = False
    # While hedging, the next piece is read in a task of its own.
    reading: asyncio.Task[Piece | None] | None = None

    @property
    def worst(self) -> int:
        return self.reservation.amount

    def read(self) -> asyncio.Task[Piece | None]:
        """Read the next piece in a task of its own, to race it against another node."""
        self.reading = asyncio.ensure_future(_next(self))
        return self.reading

    async def close(self) -> None:
        """End a read in flight, then close the node's stream (a generator that another
        task is inside cannot be closed). Shielded from the client's cancellation; a plain
        ``Task.cancel()`` gets through the shield, so it is held until the read has ended."""
        cancelled: asyncio.CancelledError | None = None
        with anyio.CancelScope(shield=True):
            reading = self.reading
            if reading is not None:
                reading.cancel()
                while not reading.done():
                    try:
                        await asyncio.wait({reading})
                    except asyncio.CancelledError as exc:
                        cancelled = exc
                if not reading.cancelled():
                    reading.exception()  # seen: a loser's error is no one's concern
            await self.events.aclose()
        if cancelled is not None:
            raise cancelled


class Relay:
    """One request relayed from ranked nodes, failing over; its state is this object's.

    :meth:`pieces` yields the answer's pieces from the best node, failing over, and
    fills :attr:`result` (what it cost, who answered). With ``policy.hedge_after_ms``, a
    request whose first node has produced no token by then is also sent to the next
    node; the first to answer wins and the other is cancelled. A ``constrained`` answer
    (a tool call, JSON) comes from one node, whole: see the module's docstring. With a
    ``wire``, another endpoint than chat completions (text completions) is relayed the
    same way. A paid node is paid through ``payers``: per attempt a
    :class:`~agoranet.payments.pay.httpx_auth.PaidRequest` whose payment carries the receipt.
    """

    def __init__(self, client: httpx.AsyncClient, candidates: list[Candidate],
                 body: dict[str, Any], prompt_ceiling: int, limit: int, policy: Policy,
                 spend: SpendLog, payers: NodePayers | None = None, *,
                 request_id: str | None = None, constrained: bool = False,
                 wire: Wire | None = None) -> None:
        self.client, self.policy, self.spend, self.payers = client, policy, spend, payers
        self.prompt_ceiling, self.limit = prompt_ceiling, limit
        self.constrained, self.wire = constrained, wire
        self.result = RelayResult(request_id or new_request_id())
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        body.pop("agoranet", None)
        if policy.commitments:  # the node's own option of the same name
            body["agoranet"] = {"commitments": True}
        self.body = body
        self.adapter = is_adapter(str(body["model"]))
        self.produced = ""  # the answer's text so far
        self.errors: list[str] = []
        self.queue = list(candidates[: policy.max_attempts])
        self.attempts: list[_Attempt] = []  # every attempt started, each finished exactly once
        self.declined: list[_NotTheNode] = []  # refusals that were not the nodes' fault
        self.budget: Reserver | None = None

    async def pieces(self, budget: Reserver) -> AsyncGenerator[Piece, None]:
        """Yield the answer's pieces, reserving each attempt's worst case from ``budget``."""
        self.budget = budget
        result, policy = self.result, self.policy
        try:
            while self.queue:
                attempt = await self.start(self.queue.pop(0))
                first: Piece | None = None
                try:
                    hedge = policy.hedge_after_ms if not self.produced and self.queue else None
                    attempt, first = await _first_piece(attempt, hedge, self.queue, self.start,
                                                         self.finish)
                    if attempt.failed is not None:
                        continue  # the finally below accounts for it
                    if first is not None:
                        self.produced += first.text
                        yield first
                    async for piece in attempt.events:
                        self.produced += piece.text
                        yield piece
                except _NotTheNode as exc:
                    attempt.failed, attempt.declined = str(exc), exc
                except CannotPayError as exc:  # the gateway's trouble, not the node's
                    attempt.declined = _cannot_pay(attempt.node, exc)
                    attempt.failed = str(attempt.declined)
                except _FAILURES as exc:
                    attempt.failed = _describe(exc)
                finally:
                    await self.finish(attempt)
                if attempt.failed is not None and attempt.segment.finish is not None:
                    # The answer was whole (e.g. a bad receipt came after it): the node is
                    # banned, the client keeps its answer.
                    result.finish_reason = attempt.segment.finish
                    return
                if attempt.failed is None:
                    segment = attempt.segment
                    attempt.node.record_success(
                        _ms(segment.first_token, segment.started) or 0.0, segment.tokens,
                        time.perf_counter() - (segment.first_token or segment.started))
                    result.finish_reason = segment.finish or "stop"
                    return
            if self.declined and not self.errors:
                raise _declined_error(self.declined)
            self.errors += [str(d) for d in self.declined]
            raise UpstreamError("no node could answer: "
                                + ("; ".join(self.errors) or "none available"), status_code=503)
        finally:  # however the request ends (a client hanging up too): release every attempt
            await _finish_all(self.attempts, self.finish)

    async def start(self, candidate: Candidate) -> _Attempt:
        """Reserve ``candidate``'s worst case and open its attempt (not sent until read)."""
        assert self.budget is not None
        node, model = candidate
        done = 0 if self.constrained else self.result.completion_tokens  # a restart asks all
        request = self.wire.continuation(self.body, self.produced, done) \
            if self.wire is not None else _continuation(self.body, self.produced, done)
        worst = expected_cost(model, self.prompt_ceiling + len(self.produced.encode()) + 8,
                              self.limit - done, adapter=self.adapter,
                              commitments=self.policy.commitments)
        segment = _Segment(node, time.perf_counter())
        attempt = _Attempt(node, model, await self.budget.reserve(worst), segment, _unsent())
        self.attempts.append(attempt)
        if self.payers is None and node.offer is not None and node.offer.payment is not None:
            attempt.events = _raising(_unpayable(node.url))  # not sent: it would be a 402
            return attempt
        try:
            paid = await self.payers.paid(node, worst) if self.payers is not None else None
        except AgoranetError as exc:  # the gateway cannot pay it: not the node's fault
            attempt.events = _raising(_cannot_pay(node, exc))
            return attempt
        segment.paid = paid is not None
        attempt.events = _segment_events(self.client, segment, request, self.policy, paid,
                                         self.wire)
        if self.constrained:
            attempt.events = _whole(attempt.events, segment)
        return attempt

    async def finish(self, attempt: _Attempt) -> None:
        """Close the node's stream and account for it, exactly once per attempt."""
        if attempt.closed:
            return
        attempt.closed = True
        try:
            await attempt.close()
        finally:  # without an await: nothing can keep the reservation from being released
            try:
                _account(attempt, self.body, self.prompt_ceiling, self.spend, self.result)
            finally:
                attempt.reservation.release(0)  # only if accounting broke before it released
            if isinstance(attempt.declined, _NotTheNode):
                self.declined.append(attempt.declined)
            elif attempt.failed is not None:
                attempt.node.record_failure(attempt.failed, self.policy.ban_base_s,
                                            self.policy.ban_cap_s)
                self.errors.append(f"{attempt.node.url}: {attempt.failed}")
                if attempt.segment.finish is None:
                    self.result.failovers += 1


_FAILURES = (_NodeFailed, httpx.HTTPError, json.JSONDecodeError, PaymentError)


def _describe(exc: BaseException) -> str:
    """A node's failure in words for the client and the node's record (no class names)."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({str(exc) or 'no answer in time'})"
    if isinstance(exc, httpx.HTTPError):
        return f"connection failed ({str(exc) or 'no answer'})"
    if isinstance(exc, json.JSONDecodeError):
        return f"sent malformed JSON ({exc.msg})"
    if isinstance(exc, ReceiptError) and "receipt" not in str(exc).lower():
        return f"bad receipt: {exc}"  # the reputation store counts it as one (failure_kind)
    return str(exc)


def _declined_error(declined: list[_NotTheNode]) -> NodesDeclinedError:
    """What the client is told when every node declined for a reason not its own: the
    gateway cannot pay (402, 503 if a channel could not be opened), else not served (404)."""
    first = min(declined, key=lambda d: {402: 0, 503: 1}.get(d.status, 2))
    messages = list(dict.fromkeys(str(d) for d in declined))
    return NodesDeclinedError("; ".join(messages), status_code=first.status, code=first.code)


async def _first_piece(
    attempt: _Attempt,
    hedge_ms: int | None,
    queue: list[Candidate],
    start: Callable[[Candidate], Awaitable[_Attempt]],
    finish: Callable[[_Attempt], Awaitable[None]],
) -> tuple[_Attempt, Piece | None]:
    """The first piece of ``attempt``, or, when hedging, of whichever node answers first.

    Each racer is read in a task of its own; ``finish`` ends that task before it closes
    the racer's stream, for a loser here or for every racer when the client hangs up.
    """
    if hedge_ms is None:
        return attempt, await _next(attempt)
    first_task = attempt.read()
    done, _ = await asyncio.wait({first_task}, timeout=hedge_ms / 1000)
    if done:
        return attempt, first_task.result()
    candidate = queue.pop(0)
    try:
        rival = await start(candidate)
    except BudgetExceededError:  # no room for a second node: wait for the first one
        queue.insert(0, candidate)
        return attempt, await first_task
    racing = {first_task: attempt, rival.read(): rival}
    while racing:
        done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            runner = racing.pop(task)
            error = task.exception()
            if error is None or isinstance(error, _ClientFault):
                for loser in racing.values():
                    loser.failed = None  # cancelled, not at fault: accounted, not banned
                    await finish(loser)
                racing.clear()
                if error is not None:
                    await finish(runner)
                    raise error  # the request itself is refused: the caller tells the client
                return runner, task.result()
            if isinstance(error, _NotTheNode | CannotPayError):
                runner.declined = error if isinstance(error, _NotTheNode) else \
                    _cannot_pay(runner.node, error)
                runner.failed = str(runner.declined)
            else:
                runner.failed = _describe(error)
            if not racing:
                return runner, None  # both failed; the caller accounts for this one
            await finish(runner)
    raise AssertionError("unreachable")


async def _whole(events: AsyncGenerator[Piece, None],
                 segment: _Segment) -> AsyncGenerator[Piece, None]:
    """``events`` held back until the node has finished its answer, then passed on; an
    answer broken off is dropped (the node's failure is raised), one whose end came
    before a failure (e.g. a bad receipt) is passed on before it is raised."""
    held: list[Piece] = []
    try:
        async for piece in events:
            held.append(piece)
    except Exception:  # a cancellation or a close passes straight through
        if segment.finish is None:
            raise
        for piece in held:
            yield piece
        raise
    finally:
        await events.aclose()
    for piece in held:
        yield piece


async def _raising(error: Exception) -> AsyncGenerator[Piece, None]:
    raise error
    yield  # pragma: no cover - makes this an async generator


async def _unsent() -> AsyncGenerator[Piece, None]:
    """The events of an attempt whose request is not sent yet: none."""
    return
    yield  # pragma: no cover - makes this an async generator


async def _finish_all(attempts: list[_Attempt],
                      finish: Callable[[_Attempt], Awaitable[None]]) -> None:
    """Finish every attempt, even when finishing one raises (then raise that after)."""
    error: BaseException | None = None
    for attempt in attempts:
        try:
            await finish(attempt)
        except BaseException as exc:  # re-raised once all are finished
            error = error or exc
    if error is not None:
        raise error


async def _next(attempt: _Attempt) -> Piece | None:
    try:
        return await anext(attempt.events)
    except StopAsyncIteration:
        return None


def _account(attempt: _Attempt, body: dict[str, Any], prompt_ceiling: int, spend: SpendLog,
             result: RelayResult) -> None:
    """Release the reservation, charge what the node produced, log it (no await: a
    cancelled request cannot interrupt it)."""
    segment, model = attempt.segment, attempt.model
    usage = segment.usage or {}
    produced = bool(segment.tokens or usage)
    prompt = int(usage.get("prompt_tokens", prompt_ceiling if segment.tokens else 0))
    completion = int(usage.get("completion_tokens", segment.tokens))
    listed = min(attempt.worst, expected_cost(
        model, prompt, completion, adapter=is_adapter(str(body["model"])),
        commitments=bool(body.get("agoranet")))) if produced else 0
    # A paid node is owed what its receipt says (for a broken answer: its last running
    # receipt), nothing without one; a free node's price list only estimates the value
    # of what it gave.
    unreceipted = 0 if segment.paid else listed
    amount = segment.charged if segment.charged is not None else unreceipted
    # A paid stream cut after its last receipt: the tokens that arrived beyond it are
    # spent too (the payer counted them), in a row of their own without a receipt.
    beyond = segment.unreceipted
    attempt.reservation.release(amount + beyond)
    if produced:
        outcome = "ok" if attempt.failed is None else "partial"
        receipt = json.dumps(segment.receipt.to_json()) if segment.receipt is not None else None
        spend.add(SpendRow(result.request_id, str(body["model"]), attempt.node.url, prompt,
                           completion, amount, _ms(segment.first_token, segment.started),
                           (time.perf_counter() - segment.started) * 1000, outcome, receipt,
                           key=result.key))
        result.nodes.append(attempt.node.url)
        if segment.commitments is not None:
            result.commitments.append({"node": attempt.node.url, **segment.commitments})
        result.amount += amount
        result.completion_tokens += completion
        result.prompt_tokens = result.prompt_tokens or prompt
    if beyond:
        spend.add(SpendRow(result.request_id, str(body["model"]), attempt.node.url, 0, 0,
                           beyond, None, 0.0, "unreceipted", key=result.key))
        result.amount += beyond


def _ms(moment: float | None, start: float) -> float | None:
    return None if moment is None else (moment - start) * 1000


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
