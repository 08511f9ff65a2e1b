"""A pydantic-ai agent against the gateway, through its OpenAI chat model."""

from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

agent = Agent(
    OpenAIChatModel("tiny", provider=OpenAIProvider()),  # OPENAI_BASE_URL, OPENAI_API_KEY
    instructions="You answer briefly.",
    model_settings={"temperature": 0, "max_tokens": 24},
)
result = agent.run_sync("Tell me about the market.")
print(result.output)
