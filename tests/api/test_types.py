import pytest
from pydantic import ValidationError

from agoranet.api.errors import error_from_exception
from agoranet.api.types import ChatCompletionRequest
from agoranet.errors import ContextLengthError, OverloadedError, UpstreamError


def chat(**kw: object) -> ChatCompletionRequest:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    return ChatCompletionRequest.model_validate(body)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=5, max_completion_tokens=9).completion_limit() == 9
    assert chat(max_tokens=5).completion_limit() == 5
    assert chat().completion_limit() is None


def test_text_parts_are_joined() -> None:
    request = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                          {"type": "text", "text": "b"}]}])
    assert request.messages[0].text() == "ab"


def test_unknown_fields_are_kept_aside() -> None:
    request = chat(presence_penalty=0.5, logit_bias={"1": 2})
    assert set(request.model_extra or {}) == {"presence_penalty", "logit_bias"}


def test_validation_error_maps_to_400_with_param() -> None:
    with pytest.raises(ValidationError) as caught:
        chat(temperature=3)
    status, body, _ = error_from_exception(caught.value)
    assert status == 400 and body["error"]["param"] == "temperature"


def test_typed_errors_map_to_their_status() -> None:
    assert error_from_exception(ContextLengthError("x"))[0] == 400
    status, body, headers = error_from_exception(OverloadedError("busy", retry_after=3))
    assert (status, headers["Retry-After"], body["error"]["type"]) == (429, "3", "rate_limit_error")
    assert error_from_exception(UpstreamError("bad", status_code=400))[0] == 400
    status, body, _ = error_from_exception(KeyError("secret detail"))
    assert status == 500 and "secret" not in body["error"]["message"]
