"""The openai client against the gateway: OPENAI_BASE_URL and OPENAI_API_KEY (a gateway key)."""

from openai import OpenAI

client = OpenAI()  # reads OPENAI_BASE_URL=http://127.0.0.1:8402/v1 and OPENAI_API_KEY=agn-...
reply = client.chat.completions.create(
    model="tiny",
    messages=[{"role": "user", "content": "Tell me about the market."}],
    max_tokens=24,
    temperature=0,
)
print(reply.choices[0].message.content)
