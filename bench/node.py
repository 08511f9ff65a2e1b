"""Node throughput on the tiny model: in-process engine vs the node over HTTP.

Prints, in one run:
- tokens/s of ``transformers``' own ``generate`` (reference), of our engine called
  in-process, and of the same engine behind ``agoranet node`` read with the official
  ``openai`` client (streamed), with the ratio node / in-process (goal: >= 0.97);
- total tokens/s with 1, 4, 16 and 32 concurrent streams through the node (continuous
  batching), as ratios to one stream (goal: >= 5x at 16), and the median time to first
  token at 16 streams;
- one stream through a second node started with ``--no-batching`` (the engine before
  continuous batching), against which one batched stream must not be slower (>= 0.95).

Every scenario runs once untimed (warm-up), then all of them in ``--repeats``
rounds, interleaved with a rotating order; the table prints medians.

With ``--engine vllm --model PATH`` (a CUDA GPU and the ``vllm`` extra) the engine in
process and the node are the vllm engine (each given ``--gpu-memory-utilization`` of the
GPU), the reference is ``transformers`` on the same GPU, and the ``--no-batching`` row
(a transformers engine option) is left out.

Usage: python bench/node.py [--tokens 256] [--repeats 5] [--model models/tiny]
       python bench/node.py --engine vllm --model PATH [--gpu-memory-utilization 0.3]
(the machine's load moves every row: compare ratios from one run)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agoranet.engines.base import Engine, GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.engines.registry import create_engine
from agoranet.node.launcher import running_node

QUESTION = "Tell me a story."


def request(tokens: int) -> GenerationRequest:
    return GenerationRequest(model="tiny", messages=(Message("user", QUESTION),),
                             max_tokens=tokens, temperature=0.0, ignore_eos=True)


class Reference:
    """``transformers``' own ``generate`` on the same weights."""

    def __init__(self, model_dir: str) -> None:
        self.loaded = load_model(model_dir)
        self.ids = self.loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True)["input_ids"].to(self.loaded.device)

    async def rate(self, tokens: int) -> float:
        import torch

        started = time.perf_counter()
        with torch.inference_mode():
            out = self.loaded.model.generate(self.ids, max_new_tokens=tokens,
                                             min_new_tokens=tokens, do_sample=False)
        return (out.shape[1] - self.ids.shape[1]) / (time.perf_counter() - started)


async def engine_rate(engine: Engine, tokens: int) -> float:
    started = time.perf_counter()
    _, _, finish = await collect(engine.stream(await engine.prepare(request(tokens))))
    return finish.completion_tokens / (time.perf_counter() - started)


async def stream_once(client: object, tokens: int, first: list[float] | None = None) -> int:
    started = time.perf_counter()
    stream = await client.chat.completions.create(  # type: ignore[attr-defined]
        model="tiny", messages=[{"role": "user", "content": QUESTION}], max_tokens=tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    produced = 0
    async for chunk in stream:
        if first is not None and chunk.choices and chunk.choices[0].delta.content:
            first.append(time.perf_counter() - started)
            first = None
        if chunk.usage:
            produced = chunk.usage.completion_tokens
    return produced


async def node_rate(client: object, tokens: int, concurrency: int,
                    first: list[float] | None = None) -> float:
    """Total tokens/s of ``concurrency`` simultaneous streams (``first``: each one's time to
    its first token is appended)."""
    started = time.perf_counter()
    counts = await asyncio.gather(*(stream_once(client, tokens, [] if first is None else first)
                                    for _ in range(concurrency)))
    return sum(counts) / (time.perf_counter() - started)


SCENARIOS = ("reference", "engine", "unbatched node x1", "node x1", "node x4", "node x16",
             "node x32")


async def measure(model_dir: str, base_url: str, unbatched_url: str | None, tokens: int,
                  repeats: int, gpu_memory: float | None = None
                  ) -> tuple[dict[str, float], float]:
    """Median tokens/s per scenario: one warm-up each, then ``repeats`` interleaved rounds
    (the order rotates each round, so drift and warm caches hit every scenario alike)."""
    from openai import AsyncOpenAI

    reference = Reference(model_dir)
    engine: Engine = (TransformersEngine(model_dir, served_model_name="tiny")
                      if gpu_memory is None else
                      create_engine("vllm", model=model_dir, served_model_name="tiny",
                                    max_active=32, gpu_memory_utilization=gpu_memory))
    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    unbatched = AsyncOpenAI(base_url=unbatched_url or base_url, api_key="bench", max_retries=0)
    first: list[float] = []  # time to first token at 16 streams
    runs: dict[str, Callable[[int], Awaitable[float]]] = {
        "reference": reference.rate,
        "engine": lambda n: engine_rate(engine, n),
        "unbatched node x1": lambda n: node_rate(unbatched, n, 1),
        "node x1": lambda n: node_rate(client, n, 1),
        "node x4": lambda n: node_rate(client, n, 4),
        "node x16": lambda n: node_rate(client, n, 16, first),
        "node x32": lambda n: node_rate(client, n, 32),
    }
    scenarios = tuple(n for n in SCENARIOS if unbatched_url or not n.startswith("unbatched"))
    samples: dict[str, list[float]] = {name: [] for name in scenarios}
    try:
        for name in scenarios:  # warm up: allocations, the connection, the node's caches
            await runs[name](8)
        first.clear()
        for index in range(repeats):
            order = scenarios[index % len(scenarios):] + scenarios[:index % len(scenarios)]
            for name in order:
                samples[name].append(await runs[name](tokens))
    finally:
        await engine.aclose()
        await client.close()
        await unbatched.close()
    return ({name: statistics.median(values) for name, values in samples.items()},
            statistics.median(first))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3,
                        help="vllm: the share of the GPU each vLLM (in process, node) may take")
    args = parser.parse_args()
    console = Console()
    if not (Path(args.model) / "config.json").exists():
        raise SystemExit(f"no model at {args.model}: run `agoranet model tiny {args.model}`")

    node = ["--model", args.model, "--served-model-name", "tiny", "--max-active", "32"]
    vllm = args.engine == "vllm"
    if vllm:
        node += ["--engine", "vllm", "--gpu-memory-utilization",
                 str(args.gpu_memory_utilization)]
    with ExitStack() as stack:
        stack.enter_context(console.status(f"{args.repeats} interleaved rounds"))
        url = stack.enter_context(running_node(node, timeout=900 if vllm else 120))
        unbatched_url = None if vllm else stack.enter_context(
            running_node([*node, "--no-batching"]))
        rates, first_token = asyncio.run(measure(
            args.model, url, unbatched_url, args.tokens, args.repeats,
            args.gpu_memory_utilization if vllm else None))
    reference, in_process = rates["reference"], rates["engine"]
    over_http = {n: rates[f"node x{n}"] for n in (1, 4, 16, 32)}
    unbatched = rates.get("unbatched node x1")

    what = "tiny model" if not vllm else f"vllm engine, {args.model}"
    table = Table(title=f"{what}, {args.tokens} tokens per request, median of "
                        f"{args.repeats} interleaved rounds after a warm-up")
    table.add_column("what")
    table.add_column("tokens/s", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row("transformers generate() (reference)", f"{reference:.0f}",
                  f"{reference / in_process:.3f} x engine")
    table.add_row("engine in-process", f"{in_process:.0f}", "1.000")
    table.add_row("node over HTTP, openai client, 1 stream", f"{over_http[1]:.0f}",
                  f"{over_http[1] / in_process:.3f} x engine (goal >= 0.97)")
    if unbatched is not None:
        table.add_row("node --no-batching (the old engine), 1 stream", f"{unbatched:.0f}",
                      f"batched 1 stream / this: {over_http[1] / unbatched:.3f} "
                      "(goal >= 0.95)")
    for concurrency in (4, 16, 32):
        goal = " (goal >= 5)" if concurrency == 16 else ""
        table.add_row(f"node, {concurrency} concurrent streams (total)",
                      f"{over_http[concurrency]:.0f}",
                      f"{over_http[concurrency] / over_http[1]:.2f} x 1 stream{goal}")
    console.print(table)
    console.print(f"time to first token at 16 concurrent streams: median "
                  f"{first_token * 1000:.0f} ms")


if __name__ == "__main__":
    main()
