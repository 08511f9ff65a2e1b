"""The OpenAI Agents SDK against the gateway, through its chat-completions model."""

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from openai import AsyncOpenAI

set_tracing_disabled(True)  # traces would go to OpenAI's servers, not to the gateway
agent = Agent(
    name="butler",
    instructions="You answer briefly.",
    model=OpenAIChatCompletionsModel(model="tiny", openai_client=AsyncOpenAI()),
    model_settings=ModelSettings(temperature=0, max_tokens=24),
)
result = Runner.run_sync(agent, "Tell me about the market.")
print(result.final_output)
