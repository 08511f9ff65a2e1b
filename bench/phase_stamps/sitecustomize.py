"""Per-request timestamps inside a node or gateway process, for bench/node_phases.py and
bench/gateway_phases.py.

Python imports this module at start-up when its folder is on PYTHONPATH. It does
nothing unless ``AGORANET_PHASE_STAMPS`` names a folder: then, once the node's (or the
gateway's) app module is imported, it wraps the functions a completion request passes
through (entry and exit of each, ``name(`` and ``name)``) and the moment the answer's
headers and body are handed to the server, and writes each request's timestamps
(nanoseconds, from its arrival) to ``<folder>/<pid>.jsonl``, a line per request, every
ten requests and at exit. A stamp made on the event loop's thread also carries that
thread's CPU time (``time.thread_time_ns``), so a bench can tell the loop working from the
loop waiting (for the interpreter's lock, the disk, another thread). Writes made on other
threads (the ledger writer's SQL and sync, tokenising) are stamped into the request
the process saw last: the benches send one request at a time.

Wrapping costs a few microseconds per stamp; both the paid and the unpaid request
pay it. Nothing under src/ knows of this.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import importlib
import importlib.abc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

_FOLDER = os.environ.get("AGORANET_PHASE_STAMPS")
# (name, nanoseconds, the loop thread's CPU nanoseconds or None on another thread)
_Stamp = tuple[str, int, int | None]
_current: contextvars.ContextVar[list[_Stamp] | None] = contextvars.ContextVar(
    "agoranet_phase_stamps", default=None)
_last: list[list[_Stamp] | None] = [None]
_loop_thread = [0]  # the thread requests arrive on: the event loop's
_requests: list[dict[str, Any]] = []


def stamp(name: str) -> None:
    stamps = _current.get() or _last[0]
    if stamps is not None:
        at = time.perf_counter_ns()
        on_loop = threading.get_ident() == _loop_thread[0]
        stamps.append((name, at, time.thread_time_ns() if on_loop else None))


_written = [0]  # requests written so far


def _dump() -> None:
    """Append the requests seen since the last time (the benches send one at a time)."""
    if _FOLDER:
        ended = _requests[_written[0]:]
        if ended:
            with (Path(_FOLDER) / f"{os.getpid()}.jsonl").open("a", encoding="utf-8") as out:
                out.writelines(json.dumps(r) + "\n" for r in ended)
            _written[0] += len(ended)


def _wrap(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)
    if getattr(original, "__wrapped_by_phase_stamps__", False):
        return
    if hasattr(original, "__code__") and original.__code__.co_flags & 0x80:  # coroutine

        @functools.wraps(original)
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            stamp(label + "(")
            try:
                return await original(*args, **kwargs)
            finally:
                stamp(label + ")")
    else:

        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            stamp(label + "(")
            try:
                return original(*args, **kwargs)
            finally:
                stamp(label + ")")
    wrapped.__wrapped_by_phase_stamps__ = True  # type: ignore[attr-defined]
    setattr(owner, name, wrapped)


def _observe_requests() -> None:
    from agoranet.api import requestlog

    observe = requestlog.RequestObserver.__call__

    async def observed(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/completions"):
            await observe(self, scope, receive, send)
            return
        _loop_thread[0] = threading.get_ident()
        stamps: list[_Stamp] = [("arrived", time.perf_counter_ns(), time.thread_time_ns())]
        paid = any(k.lower() == b"payment-signature" for k, _ in scope["headers"])
        _requests.append({"paid": paid, "stamps": stamps})
        _current.set(stamps)
        _last[0] = stamps

        async def stamped_send(message: Any) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                stamp("headers handed to the server")
            await send(message)
            if kind == "http.response.body" and not message.get("more_body"):
                stamp("body sent")
        await observe(self, scope, receive, stamped_send)
        stamp("done")
        if len(_requests) % 10 == 0:
            _dump()

    requestlog.RequestObserver.__call__ = observed  # type: ignore[method-assign]


Wraps = list[tuple[Any, str, str]]  # (module or class, function's name, its label)


def _node_wraps() -> Wraps:
    from agoranet import file_sync
    from agoranet.engines import hf
    from agoranet.node import paid_inference, payment_middleware, service
    from agoranet.payments.accept import acceptor, ledger_writer, sqlite_group, sqlite_ledger
    from agoranet.payments.schemes import batch_settlement

    return [
        (payment_middleware.PaymentMiddleware, "__call__", "payment middleware"),
        (paid_inference.PaidInference, "parse", "parse body"),
        (acceptor.PaymentAcceptor, "authorize_ahead", "authorize"),
        (acceptor.PaymentAcceptor, "_checked", "decode payment"),
        (batch_settlement, "parse_voucher", "parse voucher"),
        (batch_settlement, "check_signature", "check signature"),
        (ledger_writer.LedgerWriter, "accept_voucher", "voucher durable"),
        (sqlite_ledger.SqliteLedger, "accept_voucher", "voucher SQL"),
        (sqlite_group.SqliteGroupLedger, "sync", "voucher sync"),
        (sqlite_group.SqliteGroupLedger, "sync_started", "voucher sync started"),
        (file_sync.FileSyncs, "flush", "flush asked of the kernel"),
        (file_sync.FileSyncs, "_reap", "flush done"),
        (paid_inference.PaidInference, "prepare", "prepare"),
        (service.InferenceService, "prepare", "service prepare"),
        (hf.TransformersEngine, "prepare", "engine prepare"),
        (paid_inference.PaidInference, "admit", "admit"),
        (hf, "encode_prompt", "tokenise"),
        (acceptor.PaymentAcceptor, "require", "require worst case"),
        (service.InferenceService, "start", "generate"),
        (paid_inference.PaidCall, "answered", "receipt + payment response"),
        (paid_inference.PaidCall, "final_sent", "charge"),
    ]


def _gateway_wraps() -> Wraps:
    from starlette import responses

    from agoranet import store_writer
    from agoranet.api import handlers, jsonlimits, lean_transport
    from agoranet.gateway import budget, metrics, nodes, relay, service, spendlog

    return [
        (handlers, "read_json", "read body"),
        (service.GatewayService, "chat", "service.chat"),
        (service.GatewayService, "candidates", "rank"),
        (service.GatewayService, "reserver", "reserver"),
        (relay.Relay, "start", "start attempt"),
        (budget.Budget, "reserve", "budget reserve"),
        (lean_transport.LeanTransport, "handle_async_request", "node answers headers"),
        (lean_transport, "_send", "request written to node"),
        (jsonlimits, "loads_object", "parse an event"),
        (relay, "_check_event", "check an event"),
        (relay.Relay, "finish", "finish attempt"),
        (relay, "_account", "account"),
        (spendlog.SpendLog, "add", "spend row"),
        (nodes.NodeState, "record_success", "node's success recorded"),
        (store_writer.StoreWriter, "submit", "event handed to a writer thread"),
        (service.GatewayService, "_completion", "answer built"),
        (responses.JSONResponse, "render", "JSON rendered"),
        (metrics.GatewayMetrics, "request_done", "metrics + log line"),
    ]


_WRAPS = {"agoranet.node.app": _node_wraps, "agoranet.gateway.app": _gateway_wraps}


class _AfterApp(importlib.abc.MetaPathFinder):
    """Installs the wraps when the node's or the gateway's app module is first imported
    (before it runs, so the names it imports from elsewhere are the wrapped ones)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        wraps = _WRAPS.get(fullname)
        if wraps is not None:
            sys.meta_path.remove(self)
            _observe_requests()
            for owner, name, label in wraps():
                _wrap(owner, name, label)


if _FOLDER:
    atexit.register(_dump)
    sys.meta_path.insert(0, _AfterApp())
    importlib.invalidate_caches()
