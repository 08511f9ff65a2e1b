"""OpenAI's Responses API through the gateway, with the official ``openai`` client and the
OpenAI Agents SDK on its default (Responses) model, over two real node processes: plain
and streamed answers, a function tool and its output in a second turn by
``previous_response_id``, ``text.format`` json_schema, retrieve and delete, and a 400 for
what the network does not do."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from agoranet.node.launcher import running_command
from helpers import node_process

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string",
                                                                    "maxLength": 30}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}


@pytest.fixture(scope="module")
def network(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[str, str]]:
    """The gateway's URL and one node's."""
    home = tmp_path_factory.mktemp("gw-responses")
    args = ["--model", str(tiny_model), "--no-fine-tuning", "--no-adapters", "--free",
            "--tool-call-parser", "hermes"]  # tool_choice auto: the SDK's later turns
    with node_process(args) as first, node_process(args) as second, \
            running_command(["gateway", "--open", "--spend-log", str(home / "spend.sqlite"),
                             "--node", first, "--node", second]) as url:
        yield url, first


@pytest.fixture
def gateway(network: tuple[str, str]) -> str:
    return network[0]


@pytest.fixture
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0)


def test_a_response_plain_and_streamed(client: openai.OpenAI) -> None:
    plain = client.responses.create(model="tiny", input="Say hello.", instructions="Be brief.",
                                    max_output_tokens=12, temperature=0)
    assert plain.status in ("completed", "incomplete") and plain.output_text
    assert plain.usage is not None and 0 < plain.usage.output_tokens <= 12

    events = list(client.responses.create(model="tiny", input="Say hello.",
                                          instructions="Be brief.", max_output_tokens=12,
                                          temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == final.output_text == plain.output_text  # greedy: the same answer
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_function_call_then_its_output_by_previous_response_id(
        client: openai.OpenAI) -> None:
    first = client.responses.create(model="tiny", input="What is the weather in Oslo?",
                                    tools=[WEATHER], tool_choice="required", temperature=0,
                                    max_output_tokens=200)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    second = client.responses.create(
        model="tiny", previous_response_id=first.id, temperature=0, max_output_tokens=24,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": "4 degrees and rain"}])
    assert second.previous_response_id == first.id
    assert [item.type for item in second.output] == ["message"] and second.output_text
    assert client.responses.retrieve(second.id).id == second.id
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", previous_response_id=second.id, input="And?")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_a_json_schema_format_answers_json_of_the_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "days": {"type": "integer", "minimum": 1,
                                                        "maximum": 7}},
              "required": ["city", "days"], "additionalProperties": False}
    answer = client.responses.create(
        model="tiny", input="A forecast for Oslo, please.", temperature=0,
        max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "forecast", "schema": schema,
                         "strict": True}})
    data = json.loads(answer.output_text)
    assert set(data) == {"city", "days"} and 1 <= data["days"] <= 7


def test_models_retrieve_on_the_gateway_and_a_node(network: tuple[str, str]) -> None:
    for url in network:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        model = client.models.retrieve("tiny")
        assert model.id == "tiny" and model.object == "model"
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("org/absent-model")
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_what_the_network_does_not_do_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="Search the web.",
                                tools=[{"type": "web_search"}])
    assert caught.value.body["param"] == "tools[0].type"  # type: ignore[index]


def test_the_agents_sdk_runs_a_tool_agent_on_its_default_responses_model(
        gateway: str) -> None:
    """The tool on the first turn (``required``), an answer after (``none``, set by a hook
    once the tool ran): the tiny model would call it again under ``auto``. The answer is
    typed (the SDK's ``output_type``, sent as a strict ``text.format`` schema), so the
    grammar makes it whole whatever the model would say: a plain answer after a tool is
    the model's choice, and the tiny one, trained per machine, may choose to say nothing."""
    from agents import (
        Agent,
        AgentHooks,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        ToolCallOutputItem,
        function_tool,
        set_tracing_disabled,
    )
    from pydantic import BaseModel, Field

    set_tracing_disabled(True)  # traces would go to OpenAI's servers
    asked: list[str] = []

    class Report(BaseModel):
        city: str = Field(max_length=20)
        rain: bool

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"4 degrees and rain in {city}"

    class AnswerAfterTheTool(AgentHooks[Any]):
        async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: str) -> None:
            agent.model_settings = dataclasses.replace(agent.model_settings,
                                                       tool_choice="none")

    requests: list[httpx.Request] = []

    async def seen(request: httpx.Request) -> None:
        requests.append(request)

    client = openai.AsyncOpenAI(base_url=gateway, api_key="unused", max_retries=0,
                                http_client=httpx.AsyncClient(event_hooks={"request": [seen]}))
    agent = Agent(
        name="butler", instructions="Answer with the weather.", tools=[get_weather],
        model=OpenAIResponsesModel(model="tiny", openai_client=client), output_type=Report,
        model_settings=ModelSettings(temperature=0, max_tokens=200, tool_choice="required"),
        hooks=AnswerAfterTheTool(), reset_tool_choice=False)
    result = Runner.run_sync(agent, "What is the weather in Oslo?", max_turns=4)
    assert len(asked) == 1
    outputs = [item.output for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    assert outputs == [f"4 degrees and rain in {asked[0]}"]
    assert isinstance(result.final_output, Report)
    # the SDK spoke the Responses API, and its second turn carried the tool's result
    assert [r.url.path for r in requests] == ["/v1/responses", "/v1/responses"]
    second = json.loads(requests[1].content)
    assert second["text"]["format"]["type"] == "json_schema"
    assert {"type": "function_call_output", "call_id": second["input"][-1]["call_id"],
            "output": outputs[0]}.items() <= second["input"][-1].items()
