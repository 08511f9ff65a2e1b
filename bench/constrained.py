"""Constrained decoding on the tiny model: what a grammar costs per token and per schema.

Prints, in one run:
- tokens/s of the same request unconstrained, under a ``json_schema`` response format,
  and as a forced tool call (one named function, and ``required`` among two: the model
  picks the name), each with the ratio to unconstrained (goal: >= 0.9), for one stream
  and for 4 concurrent streams;
- grammar compile time per schema, cold (a schema never seen) and cached (the same
  schema again), for a small and a larger schema; and the one-off cost of preparing a
  tokenizer for grammars (first constrained request of a node).

Every scenario runs once untimed (warm-up), then all in ``--repeats`` rounds, interleaved
with a rotating order; the table prints medians. The answer is long (a string of up to
``--chars`` characters) so that decode steps, not prefill, dominate.

Usage: python bench/constrained.py [--tokens 160] [--repeats 5] [--model models/tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from agoranet.engines.base import GenerationRequest, Message
from agoranet.engines.constrained import GrammarBook
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.engines.structured import JsonOutput

QUESTION = (Message("user", "Tell me a story."),)


def story_schema(chars: int) -> dict[str, Any]:
    return {"type": "object", "properties": {"title": {"type": "string", "maxLength": 20},
                                             "story": {"type": "string", "maxLength": chars}},
            "required": ["title", "story"], "additionalProperties": False}


def large_schema(tag: str) -> dict[str, Any]:
    item = {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 10**6},
        "kind": {"enum": ["a", "b", "c", "d"]},
        "label": {"type": "string", "minLength": 1, "maxLength": 30},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
        "ref": {"type": "string", "format": "uuid"},
        "score": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]},
    }, "required": ["id", "kind", "label"], "additionalProperties": False}
    return {"type": "object", "properties": {
        f"{tag}_{i}": item for i in range(12)}, "required": [f"{tag}_0"],
        "additionalProperties": False}


def requests(tokens: int, chars: int) -> dict[str, GenerationRequest]:
    schema = story_schema(chars)
    base: dict[str, Any] = {"model": "tiny", "messages": QUESTION, "max_tokens": tokens,
                            "temperature": 1.0, "seed": 1}
    other = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"]}}}
    tell = {"type": "function", "function": {"name": "tell", "parameters": schema}}
    return {
        "unconstrained": GenerationRequest(**base, ignore_eos=True),
        "json_schema": GenerationRequest(**base, response_format={
            "type": "json_schema", "json_schema": {"name": "story", "schema": schema}}),
        "tool call (named)": GenerationRequest(
            **base, tools=(tell, other),
            tool_choice={"type": "function", "function": {"name": "tell"}}),
        "tool call (required of 2)": GenerationRequest(
            **base, tools=(tell, other), tool_choice="required"),
    }


async def rate(engine: TransformersEngine, request: GenerationRequest, streams: int) -> float:
    async def one() -> int:
        finish = None
        async for event in engine.stream(await engine.prepare(request)):
            finish = event
        return int(getattr(finish, "completion_tokens", 0))

    started = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


async def rounds(scenarios: dict[str, Callable[[], Awaitable[float]]], repeats: int
                 ) -> dict[str, float]:
    for run in scenarios.values():  # warm-up
        await run()
    samples: dict[str, list[float]] = {name: [] for name in scenarios}
    names = list(scenarios)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            samples[name].append(await scenarios[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def compile_times(engine: TransformersEngine, repeats: int) -> dict[str, float]:
    book = engine.grammar_book()
    out: dict[str, float] = {}
    for label, make in (("small", lambda t: story_schema(100 + t)),
                        ("large (12 nested objects)", large_schema)):
        cold, warm = [], []
        for i in range(max(repeats, 5)):
            schema = make(f"k{i}" if label.startswith("large") else i)  # type: ignore[arg-type]
            started = time.perf_counter()
            book.compile(JsonOutput(schema, "p"))
            cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            book.compile(JsonOutput(schema, "p"))
            warm.append(time.perf_counter() - started)
        out[f"{label}: cold"] = statistics.median(cold) * 1e3
        out[f"{label}: cached"] = statistics.median(warm) * 1e3
    started = time.perf_counter()
    GrammarBook(engine.loaded.tokenizer, book.vocab_size, engine.loaded.eos_ids)
    out["tokenizer setup (once per model)"] = (time.perf_counter() - started) * 1e3
    return out


async def main(args: argparse.Namespace) -> None:
    console = Console()
    engine = TransformersEngine(loaded=load_model(args.model), max_active=8, max_queue=16)
    try:
        reqs = requests(args.tokens, args.chars)
        table = Table(title=f"tokens/s, tiny model, {args.tokens} tokens, temperature 1 "
                            f"(medians of {args.repeats})")
        table.add_column("request")
        for streams in (1, 4):
            table.add_column(f"{streams} stream(s)", justify="right")
            table.add_column("vs unconstrained", justify="right")
        results = {}
        for streams in (1, 4):
            scenarios = {name: (lambda r=r, s=streams: rate(engine, r, s))
                         for name, r in reqs.items()}
            results[streams] = await rounds(scenarios, args.repeats)  # type: ignore[arg-type]
        for name in reqs:
            row = [name]
            for streams in (1, 4):
                value = results[streams][name]
                row += [f"{value:,.0f}", f"{value / results[streams]['unconstrained']:.2f}x"]
            table.add_row(*row)
        console.print(table)
        times = Table(title="grammar compile (ms, medians)")
        times.add_column("schema")
        times.add_column("ms", justify="right")
        for name, ms in compile_times(engine, args.repeats).items():
            times.add_row(name, f"{ms:.3f}")
        console.print(times)
        console.print(f"engine counters: {engine.stats()}")
    finally:
        await engine.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
