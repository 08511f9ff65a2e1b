"""The OpenAI Agents SDK against the gateway, on its default model (the Responses API)."""

from agents import Agent, ModelSettings, Runner, set_tracing_disabled

set_tracing_disabled(True)  # traces would go to OpenAI's servers, not to the gateway
agent = Agent(
    name="butler",
    instructions="You answer briefly.",
    model="tiny",  # served through OPENAI_BASE_URL, the gateway
    model_settings=ModelSettings(temperature=0, max_tokens=24),
)
result = Runner.run_sync(agent, "Tell me about the market.")
print(result.final_output)
