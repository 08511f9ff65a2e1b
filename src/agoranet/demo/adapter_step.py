"""Demo step: train a house-style LoRA adapter on CPU, upload it, compare answers side by side."""

from __future__ import annotations

from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agoranet.errors import AdapterError
from agoranet.tuning.adapter import pack_adapter

__all__ = ["COMPARE_QUESTIONS", "adapter_step"]

COMPARE_QUESTIONS = ["Hello!", "Tell me about the market.", "Where is the cat?"]


def adapter_step(base_url: str, model_dir: Path, work: Path, console: Console) -> None:
    from openai import OpenAI

    from agoranet.engines.hf import load_model
    from agoranet.tuning.data import load_jsonl
    from agoranet.tuning.housestyle import write_house_style
    from agoranet.tuning.lora import train_adapter

    data = write_house_style(work / "house-style.jsonl")
    examples, digest = load_jsonl(data)
    console.print(f"house-style data: {len(examples)} chats written to {data}")
    with Progress(TextColumn("training adapter"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("tune", total=None, loss="-")
        report = train_adapter(
            examples, load_model(str(model_dir)), work / "adapter", data_sha256=digest,
            progress=lambda s, n, loss: progress.update(task, completed=s, total=n,
                                                        loss=f"{loss:.3f}"),
        )
    console.print(f"held-out loss {report.heldout_before:.2f} -> {report.heldout_after:.2f} "
                  f"in {report.seconds:.1f} s; adapter id {report.adapter_id[:16]}…")
    response = httpx.post(f"{base_url}/adapters", content=pack_adapter(work / "adapter"),
                          params={"id": report.adapter_id}, timeout=60)
    if response.status_code != 201:
        raise AdapterError(f"the node refused the adapter: {response.text[:200]}")
    tuned = response.json()["model"]
    console.print(f"uploaded; the node serves it as [bold]{tuned}[/]\n")

    client = OpenAI(base_url=base_url, api_key="no-key-needed")
    table = Table(title="same prompt, base model vs personal adapter (greedy)", show_lines=True)
    table.add_column("prompt")
    table.add_column("tiny")
    table.add_column("tiny + house-style adapter")
    for question in COMPARE_QUESTIONS:
        row = [question]
        for model in ("tiny", tuned):
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], temperature=0,
                max_tokens=60,
            )
            row.append(reply.choices[0].message.content or "")
        table.add_row(*row)
    console.print(table)
