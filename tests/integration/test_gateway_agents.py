"""Agent frameworks against the gateway (real node and gateway processes): a pydantic-ai
agent loop with a Python function tool, forced to call it on its first step and then
answering; LangChain's ``bind_tools`` and ``with_structured_output``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from agoranet.node.launcher import running_command
from helpers import node_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("gw-agents")
    with node_process(["--model", str(tiny_model), "--no-fine-tuning", "--no-adapters",
                       "--free"]) as node, \
            running_command(["gateway", "--open", "--spend-log", str(home / "spend.sqlite"),
                             "--node", node]) as url:
        yield url


class Forecast(BaseModel):
    city: str = Field(max_length=30)
    days: int = Field(ge=1, le=7)
    unit: Literal["celsius", "fahrenheit"]


def test_a_pydantic_ai_agent_calls_its_tool_once_then_answers(gateway: str) -> None:
    from pydantic_ai import Agent, RunContext
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.messages import ToolCallPart, ToolReturnPart
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    @dataclass
    class CallFirst(AbstractCapability[None]):
        """The tool on the first step (``required``), an answer after (``none``)."""

        def get_model_settings(self) -> Any:
            def settings(ctx: RunContext[None]) -> dict[str, Any]:
                return {"tool_choice": "required" if ctx.run_step <= 1 else "none"}
            return settings

    calls: list[tuple[str, int]] = []
    model = OpenAIChatModel("tiny", provider=OpenAIProvider(base_url=gateway, api_key="x"))
    agent = Agent(model, instructions="Use the weather tool, then answer.",
                  model_settings={"temperature": 0, "max_tokens": 200,
                                  "parallel_tool_calls": False},
                  capabilities=[CallFirst()])

    @agent.tool_plain
    def get_weather(city: Annotated[str, Field(max_length=30)], days: int) -> str:
        """The weather forecast for a city."""
        calls.append((city, days))
        return f"sunny in {city} for {days} days"

    result = agent.run_sync("What is the weather in Paris?")
    assert len(calls) == 1 and isinstance(calls[0][0], str) and isinstance(calls[0][1], int)
    assert isinstance(result.output, str) and result.output
    parts = [p for m in result.all_messages() for p in m.parts]
    assert [type(p) for p in parts if isinstance(p, ToolCallPart | ToolReturnPart)] == [
        ToolCallPart, ToolReturnPart]


def test_langchain_bind_tools_and_structured_output(gateway: str) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, days: int) -> str:
        """The weather forecast for a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(model="tiny", base_url=gateway, api_key="x",  # type: ignore[arg-type]
                     temperature=0, max_tokens=150, max_retries=0)
    for choice in ("get_weather", "required"):
        message = llm.bind_tools([get_weather], tool_choice=choice,
                                 parallel_tool_calls=False).invoke(
            "What is the weather in Paris?")
        [call] = message.tool_calls  # type: ignore[attr-defined]
        assert call["name"] == "get_weather"
        assert isinstance(call["args"]["city"], str) and isinstance(call["args"]["days"], int)
        assert set(call["args"]) == {"city", "days"}
    shaped = llm.with_structured_output(Forecast).invoke("What is the weather in Paris?")
    assert isinstance(shaped, Forecast)
    loose = ChatOpenAI(model="tiny", base_url=gateway, api_key="x",  # type: ignore[arg-type]
                       temperature=1, seed=3, max_tokens=150, max_retries=0)
    tooled = loose.with_structured_output(Forecast, method="function_calling").invoke(
        "What is the weather in Paris?")
    assert isinstance(tooled, Forecast)
