"""``agoranet demo``: a node serving the tiny model, asked a question by the ``openai`` client."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agoranet.errors import ConfigError
from agoranet.node.launcher import running_node

__all__ = ["DEMO_QUESTIONS", "run_demo"]

DEMO_QUESTIONS = ["Tell me a short story.", "What should I cook for dinner?"]


def _ensure_model(path: Path, console: Console) -> None:
    if (path / "model.safetensors").exists():
        return
    from agoranet.cli.model import build_with_progress

    console.print(f"building the tiny model into {path} (about a minute, once)")
    build_with_progress(path, None, 0, console)


def run_demo(model_dir: Path, console: Console) -> None:
    """Start a node, stream answers with the official client, print usage, stop the node."""
    try:
        from openai import OpenAI
    except ImportError as exc:
        raise ConfigError("the demo needs the openai client: pip install openai") from exc
    _ensure_model(model_dir, console)
    with ExitStack() as stack:
        with console.status("starting a node"):
            base_url = stack.enter_context(
                running_node(["--model", str(model_dir), "--served-model-name", "tiny"])
            )
        stack.callback(console.print, "node stopped")
        console.print(f"node serving [bold]tiny[/] at {base_url}\n")
        client = OpenAI(base_url=base_url, api_key="no-key-needed")
        table = Table(title="requests")
        for column in ("question", "prompt tok", "completion tok", "first token ms", "tok/s"):
            table.add_column(column, justify="right" if column != "question" else "left")
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
