"""A paid request is parsed and prepared once, and its metering is passed explicitly.

The payment middleware's paid-inference service parses and prepares (tokenises) a
request to price it; the routes below take that parsed request, its prepared form and
its :class:`~agoranet.node.metering.Metering` from the request's scope instead of
reading and validating the body again (it used to be parsed twice, and a free model on
a paid node tokenised twice), and the service takes the metering as an argument (it
used to find it in a context variable). In process, on the fake chain of
acceptor_support; the middleware's money rules are in test_payment_middleware_rules.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agoranet.api.types import ChatCompletionRequest
from agoranet.market import TokenPrices
from agoranet.node import metering
from agoranet.node.metering import Metering
from agoranet.node.service import InferenceService

from .acceptor_support import MAX, pay
from .paid_support import BODY
from .test_payment_middleware_rules import RECEIPT_OBJECT, Node, cost, invariants, node, post

__all__ = ["node"]  # the fixture, shared with the middleware's rule tests

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every chat request body validated (parsed into the wire model), in order."""
    seen: list[Any] = []
    validate = ChatCompletionRequest.model_validate.__func__  # type: ignore[attr-defined]

    def counted(cls: type[ChatCompletionRequest], data: Any, **kw: Any) -> Any:
        seen.append(data)
        return validate(cls, data, **kw)

    monkeypatch.setattr(ChatCompletionRequest, "model_validate", classmethod(counted))
    return seen


async def test_a_paid_request_is_parsed_and_prepared_once(node: Node,
                                                          validations: list[Any]) -> None:
    response = await post(node.app(), pay(MAX), **{"x-request-id": "once-1"})
    assert response.status_code == 200, response.text
    assert len(validations) == 1  # the route did not read and validate the body again
    assert node.engine.prepares == 1
    assert node.charged() == cost(3, 5)
    invariants(node)


async def test_a_free_model_on_a_paid_node_is_prepared_once(node: Node,
                                                            validations: list[Any]) -> None:
    app = node.app(prices=lambda model: TokenPrices(0, 0))
    response = await post(app)
    assert response.status_code == 200, response.text
    assert (len(validations), node.engine.prepares, node.engine.calls) == (1, 1, 1)
    assert node.charged() == 0


async def test_the_service_meters_through_the_metering_it_is_given(node: Node) -> None:
    """No ambient state: the usage and the receipt frames go through the argument."""
    assert not any(type(v).__name__ == "ContextVar" for v in vars(metering).values())
    service = InferenceService(node.engine)
    request = ChatCompletionRequest.model_validate(BODY)
    prepared = await service.prepare_chat(request)
    plain = Metering()
    await service.chat(request, prepared=prepared, metering=plain)
    assert plain.usage is not None
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (3, 5)
    finished: list[int] = []

    async def final(finish: Any) -> list[bytes]:
        finished.append(finish.completion_tokens)
        return [b'data: {"object": "' + RECEIPT_OBJECT.encode() + b'"}\n\n']

    streamed = Metering(stream_finish=final)
    stream = ChatCompletionRequest.model_validate({**BODY, "stream": True})
    frames = await service.chat(stream, prepared=await service.prepare_chat(stream),
                                metering=streamed)
    assert not isinstance(frames, ChatCompletionRequest)
    chunks = [chunk async for chunk in frames]  # type: ignore[union-attr]
    assert finished == [5] and streamed.usage is not None
    assert RECEIPT_OBJECT.encode() in chunks[-2] and chunks[-1].startswith(b"data: [DONE]")
    assert json.loads(chunks[0].removeprefix(b"data: "))["object"] == "chat.completion.chunk"
    assert plain.stream_finish is None and node.engine.prepares == 2
