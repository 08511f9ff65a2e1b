"""The gateway: a local OpenAI endpoint that discovers, ranks, pays and fails over nodes."""
