"""OpenAI wire types, SSE framing and error JSON shared by node and gateway."""
