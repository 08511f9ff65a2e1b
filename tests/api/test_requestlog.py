"""The request observer and the log formats: every request ends in exactly one record,
whatever way it ends, and observing never breaks serving."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agoranet.api.logformat import EVENTS_LOGGER, configure_logging, log_event
from agoranet.api.requestlog import RequestObserver, RequestRecord, current_request
from agoranet.errors import ConfigError


def app(done: list[RequestRecord], *, failing_observer: bool = False) -> Starlette:
    async def plain(request: Request) -> Response:
        record = current_request()  # None where not observed (a GET)
        if record is not None:
            record.model, record.prompt_tokens = "m", 7
        return JSONResponse({"ok": record is not None})

    async def broken_stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            current = current_request()
            assert current is not None
            current.completion_tokens = 2  # noted from inside the streamed body
            yield b"data: {}\n\n"
            raise RuntimeError("the engine died")
        return StreamingResponse(body(), media_type="text/event-stream")

    async def failed_stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: {}\n\n"
            yield b'data: {"error":{"message":"no node could answer"}}\n\n'
        return StreamingResponse(body(), media_type="text/event-stream")

    def on_done(record: RequestRecord) -> None:
        done.append(record)
        if failing_observer:
            raise RuntimeError("metrics are broken")

    return Starlette(routes=[Route("/plain", plain, methods=["POST", "GET"]),
                             Route("/stream", broken_stream, methods=["POST"]),
                             Route("/failed", failed_stream, methods=["POST"])],
                     middleware=[_observer(on_done)])


def _observer(on_done: object) -> object:
    from starlette.middleware import Middleware

    return Middleware(RequestObserver, paths=["/plain", "/stream", "/failed"],
                      on_done=on_done)


async def test_one_record_per_request_however_it_ends() -> None:
    done: list[RequestRecord] = []
    transport = httpx.ASGITransport(app=app(done), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/plain", headers={"x-request-id": "r1"})).status_code == 200
        assert (await client.get("/plain")).json() == {"ok": False}  # not a POST: not observed
        await client.post("/stream")
        assert (await client.post("/failed")).status_code == 200
        assert (await client.post("/elsewhere")).status_code == 404  # not an observed path
    assert [(r.path, r.request_id, r.model, r.prompt_tokens, r.status, r.outcome)
            for r in done[:1]] == [("/plain", "r1", "m", 7, 200, "ok")]
    [_, stream, failed] = done
    assert (stream.stream, stream.completion_tokens, stream.failed, stream.outcome) == (
        True, 2, True, "aborted")
    assert (failed.status, failed.failed, failed.outcome) == (200, False, "error")
    assert stream.first_byte_ms is not None and stream.latency_ms >= stream.first_byte_ms


async def test_a_broken_observer_never_breaks_the_request() -> None:
    done: list[RequestRecord] = []
    transport = httpx.ASGITransport(app=app(done, failing_observer=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        reply = await client.post("/plain")
    assert reply.status_code == 200 and reply.json() == {"ok": True} and len(done) == 1


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_log_formats(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], logging.getLogger(EVENTS_LOGGER).level
    root.handlers = []
    try:
        configure_logging(log_format)
        log_event("request", request_id="r9", nodes=["http://a", "http://b"], amount=12,
                  ttft_ms=None, latency_ms=3.14159)
        logging.getLogger("agoranet.other").warning("plain %s", "words")
    finally:
        root.handlers = saved[0]
        logging.getLogger(EVENTS_LOGGER).setLevel(saved[1])
    lines = capsys.readouterr().err.strip().splitlines()
    if log_format == "json":
        event, warning = (json.loads(line) for line in lines)
        assert (event["event"], event["request_id"], event["nodes"], event["amount"],
                event["ttft_ms"], event["level"]) == (
            "request", "r9", ["http://a", "http://b"], 12, None, "INFO")
        assert (warning["message"], warning["level"]) == ("plain words", "WARNING")
    else:
        assert lines == ["INFO agoranet.events: request request_id=r9 "
                         "nodes=http://a,http://b amount=12 ttft_ms=- latency_ms=3.1",
                         "WARNING agoranet.other: plain words"]


def test_an_unknown_log_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        configure_logging("xml")
