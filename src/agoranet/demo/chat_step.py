"""Demo step: streamed chats with the official openai client, and what they cost in time."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

__all__ = ["DEMO_QUESTIONS", "chat_step"]

DEMO_QUESTIONS = ["Tell me a short story.", "What should I cook for dinner?"]


def chat_step(base_url: str, console: Console) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="no-key-needed")
    table = Table(title="requests")
    for column in ("question", "prompt tok", "completion tok", "first token ms", "tok/s"):
        table.add_column(column, justify="left" if column == "question" else "right")
    for question in DEMO_QUESTIONS:
        console.print(f"[bold cyan]user:[/] {question}")
        console.print("[bold green]tiny:[/] ", end="")
        started = time.perf_counter()
        first: float | None = None
        usage = None
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}],
            stream=True, stream_options={"include_usage": True}, seed=1,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                console.print(chunk.choices[0].delta.content, end="", highlight=False)
            usage = chunk.usage or usage
        elapsed = time.perf_counter() - started
        console.print("\n")
        if usage is not None:
            table.add_row(question, str(usage.prompt_tokens), str(usage.completion_tokens),
                          f"{((first or started) - started) * 1000:.0f}",
                          f"{usage.completion_tokens / elapsed:.0f}")
    console.print(table)
