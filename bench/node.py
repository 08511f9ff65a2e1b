"""Node throughput on the tiny model: in-process engine vs the node over HTTP.

Prints, in one run:
- tokens/s of ``transformers``' own ``generate`` (reference), of our engine called
  in-process, and of the same engine behind ``agoranet node`` read with the official
  ``openai`` client (streamed), with the ratio node / in-process (goal: >= 0.97);
- total tokens/s with 1, 4 and 16 concurrent streams through the node.

Usage: python bench/node.py [--tokens 256] [--repeats 5] [--model models/tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.node.launcher import running_node

QUESTION = "Tell me a story."


def request(tokens: int) -> GenerationRequest:
    return GenerationRequest(model="tiny", messages=(Message("user", QUESTION),),
                             max_tokens=tokens, temperature=0.0, ignore_eos=True)


def hf_generate_rate(model_dir: str, tokens: int, repeats: int) -> float:
    import torch

    loaded = load_model(model_dir)
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.inference_mode():  # warm up before timing
        loaded.model.generate(ids, max_new_tokens=8, do_sample=False)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens,
                                        do_sample=False)
        rates.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - started))
    return statistics.median(rates)


async def engine_rate(model_dir: str, tokens: int, repeats: int) -> float:
    engine = TransformersEngine(model_dir, served_model_name="tiny")
    try:
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            _, _, finish = await collect(engine.stream(await engine.prepare(request(tokens))))
            rates.append(finish.completion_tokens / (time.perf_counter() - started))
        return statistics.median(rates)
    finally:
        await engine.aclose()


async def stream_once(client: object, tokens: int) -> int:
    stream = await client.chat.completions.create(  # type: ignore[attr-defined]
        model="tiny", messages=[{"role": "user", "content": QUESTION}], max_tokens=tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    produced = 0
    async for chunk in stream:
        if chunk.usage:
            produced = chunk.usage.completion_tokens
    return produced


async def node_rates(base_url: str, tokens: int, repeats: int) -> dict[int, float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    await stream_once(client, 8)  # warm the connection
    results: dict[int, float] = {}
    for concurrency in (1, 4, 16):
        rates = []
        for _ in range(repeats if concurrency == 1 else max(2, repeats // 2)):
            started = time.perf_counter()
            counts = await asyncio.gather(*(stream_once(client, tokens) for _ in range(concurrency)))
            rates.append(sum(counts) / (time.perf_counter() - started))
        results[concurrency] = statistics.median(rates)
    await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    console = Console()
    if not (Path(args.model) / "config.json").exists():
        raise SystemExit(f"no model at {args.model}: run `agoranet model tiny {args.model}`")

    with console.status("transformers generate()"):
        reference = hf_generate_rate(args.model, args.tokens, args.repeats)
    with console.status("engine in-process"):
        in_process = asyncio.run(engine_rate(args.model, args.tokens, args.repeats))
    with console.status("node over HTTP"), running_node(
        ["--model", args.model, "--served-model-name", "tiny", "--max-active", "16"]
    ) as url:
        over_http = asyncio.run(node_rates(url, args.tokens, args.repeats))

    table = Table(title=f"tiny model, {args.tokens} tokens per request, median of runs")
    table.add_column("what")
    table.add_column("tokens/s", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row("transformers generate() (reference)", f"{reference:.0f}",
                  f"{reference / in_process:.3f} x engine")
    table.add_row("engine in-process", f"{in_process:.0f}", "1.000")
    table.add_row("node over HTTP, openai client, 1 stream", f"{over_http[1]:.0f}",
                  f"{over_http[1] / in_process:.3f} x engine (goal >= 0.97)")
    for concurrency in (4, 16):
        table.add_row(f"node, {concurrency} concurrent streams (total)",
                      f"{over_http[concurrency]:.0f}",
                      f"{over_http[concurrency] / over_http[1]:.2f} x 1 stream")
    console.print(table)


if __name__ == "__main__":
    main()
