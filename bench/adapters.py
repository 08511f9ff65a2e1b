"""Multi-adapter serving on the tiny model: tokens/s with 0, 1, 8 and 32 LoRA adapters.

One engine, one base model. A house-style adapter is trained here (seconds on
CPU), then 31 variants are made from it by scaling its LoRA weights (distinct
files, so distinct content ids). Each scenario runs the same 32 requests of
TOKENS tokens, 16 at a time, round-robin over its adapters, after a warm-up pass
that loads them all; the scenarios then run in ``--rounds`` interleaved rounds
(alternating order), and the table prints each one's median total tokens/s and
its ratio to the base alone. The batched engine runs the adapters of a step in one
mixed forward pass (goal: >= 0.7x the base alone); the same scenarios on an engine
with ``batching=False`` (one sequence per step, switching adapters) are the before.

Usage: python bench/adapters.py [--model models/tiny] [--tokens 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.tuning.adapter import MANIFEST, adapter_model_name, pack_adapter
from agoranet.tuning.data import load_jsonl
from agoranet.tuning.housestyle import write_house_style
from agoranet.tuning.lora import train_adapter

REQUESTS = 32
CONCURRENCY = 16


def make_variants(source: Path, root: Path, count: int) -> list[Path]:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(source / "adapter_model.safetensors"))
    variants = [source]
    for i in range(1, count):
        target = root / f"variant-{i}"
        shutil.copytree(source, target)
        scaled = {k: v * (1 + 0.01 * i) if "lora_B" in k else v for k, v in weights.items()}
        save_file(scaled, str(target / "adapter_model.safetensors"))
        manifest = json.loads((target / MANIFEST).read_text())
        manifest["created"] = f"variant {i}"
        (target / MANIFEST).write_text(json.dumps(manifest))
        variants.append(target)
    return variants


async def run(engine: TransformersEngine, models: list[str], tokens: int) -> float:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> int:
        request = GenerationRequest(model=models[i % len(models)],
                                    messages=(Message("user", "Tell me a story."),),
                                    max_tokens=tokens, temperature=0.0, ignore_eos=True)
        async with gate:
            return (await collect(engine.stream(await engine.prepare(request))))[2].completion_tokens

    started = time.perf_counter()
    produced = sum(await asyncio.gather(*(one(i) for i in range(REQUESTS))))
    return produced / (time.perf_counter() - started)


async def bench(model_dir: str, tokens: int, rounds: int, console: Console) -> None:
    root = Path(tempfile.mkdtemp(prefix="agoranet-bench-adapters-"))
    try:
        with console.status("training a house-style adapter"):
            examples, digest = load_jsonl(write_house_style(root / "data.jsonl"))
            train_adapter(examples, load_model(model_dir), root / "adapter", data_sha256=digest)
        variants = make_variants(root / "adapter", root, 32)
        loaded = load_model(model_dir, served_name="tiny")
        engine = TransformersEngine(loaded=loaded, max_active=CONCURRENCY,
                                    adapters_dir=root / "store", max_adapters=32)
        unbatched = TransformersEngine(  # its own copy of the weights: peft changes them
            loaded=load_model(model_dir, served_name="tiny"), max_active=CONCURRENCY,
            batching=False, adapters_dir=root / "store-unbatched", max_adapters=32)
        names = [adapter_model_name("tiny", engine.add_adapter(pack_adapter(v), 10**9).id)
                 for v in variants]
        for v in variants:
            unbatched.add_adapter(pack_adapter(v), 10**9)
        plans = {"base model alone": ["tiny"], "1 adapter": names[:1],
                 "8 adapters": names[:8], "32 adapters": names}
        scenarios = {label: (engine, models) for label, models in plans.items()}
        scenarios |= {f"unbatched: {label}": (unbatched, models)
                      for label, models in plans.items() if label != "1 adapter"}
        samples: dict[str, list[float]] = {label: [] for label in scenarios}
        try:
            with console.status("warming up: every adapter loaded once"):
                for runner, models in scenarios.values():
                    await run(runner, models, 8)
            for index in range(rounds):  # scenarios interleaved, so drift hits each alike
                labels = list(scenarios) if index % 2 == 0 else list(reversed(scenarios))
                for label in labels:
                    with console.status(f"round {index + 1}/{rounds}: {label}"):
                        samples[label].append(await run(*scenarios[label], tokens))
            stats = engine.stats()
        finally:
            await engine.aclose()
            await unbatched.aclose()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rates = {label: statistics.median(values) for label, values in samples.items()}
    base = rates["base model alone"]
    before = {label: rates[f"unbatched: {label}"] for label in ("8 adapters", "32 adapters")}
    table = Table(title=f"{REQUESTS} requests x {tokens} tokens, {CONCURRENCY} concurrent, "
                        "requests spread round-robin over the adapters; median of "
                        f"{rounds} interleaved rounds")
    table.add_column("scenario")
    table.add_column("tokens/s", justify="right")
    table.add_column("vs base alone", justify="right")
    table.add_column("vs unbatched", justify="right")
    for label, rate in rates.items():
        unbatched_base = rates["unbatched: base model alone"]
        own_base = unbatched_base if label.startswith("unbatched") else base
        vs = f"{rate / before[label]:.2f}" if label in before else ""
        table.add_row(label, f"{rate:.0f}", f"{rate / own_base:.2f}", vs)
    console.print(table)
    console.print(f"adapter loads {stats['adapter_loads']}, switches {stats['adapter_switches']}, "
                  f"evictions {stats['adapter_evictions']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(bench(args.model, args.tokens, args.rounds, Console()))


if __name__ == "__main__":
    main()
