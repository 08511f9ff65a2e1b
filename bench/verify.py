"""Audit detection and cost on the tiny model, in one run.

For an honest engine and each cheat of ``agoranet.testing.cheats`` (int8, int4,
a smaller model, another chat template, system messages dropped, replayed
answers; all under the honest name and hash), generate answers to the same
fresh challenges (half greedy, half seeded; prompts drawn from the dialogue
grammar, so some repeat, which is what a replaying node feeds on), audit each
against the reference weights, and print: answers flagged, audited tokens up to
the first flag, and the verifier's compute per audited token against the
generation's compute per token (the ratio bounds what auditing a share of
traffic costs).

With ``--engine vllm`` (a CUDA GPU and the ``vllm`` extra) the honest answers come from
the vllm engine instead, audited against the same weights loaded with transformers, in
two rows: the greedy challenges (replayable) and the seeded ones (vLLM samples with its
own kernels, not the stated sampler, so these are expected to be flagged).

Usage: python bench/verify.py [--model models/tiny] [--small models/tiny-small] [--answers 60]
       python bench/verify.py --engine vllm --model PATH [--answers 60]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agoranet.engines.base import Engine
from agoranet.engines.hf import load_model
from agoranet.engines.registry import create_engine
from agoranet.testing.cheats import engine_with_cheat
from agoranet.tinymodel import SIZES, build_tiny_model
from agoranet.verify.calibration import Tally, audit_engine
from agoranet.verify.node_audit import challenges

# "+commitments": the challenges also ask for TOPLOC-style commitments, checked too.
MODES = [None, "int8", "int4", "smaller", "template", "nosystem", "replay", "+commitments",
         "int8+commitments", "int4+commitments"]


VLLM_MODES = ["vllm greedy", "vllm sampled"]


async def run(model: str, reference: Any, cheat: str | None, answers: int, tokens: int,
              seed: int, commitments: bool, gpu_memory: float = 0.3) -> Tally:
    if cheat in VLLM_MODES:  # the vllm engine, honest; only its greedy or its seeded answers
        engine: Engine = create_engine("vllm", model=model, gpu_memory_utilization=gpu_memory)
    else:
        engine = engine_with_cheat(cheat, loaded=load_model(model))
    try:
        requests = challenges(answers, engine.models()[0].name, tokens, random.Random(seed))
        if cheat in VLLM_MODES:
            greedy = cheat == "vllm greedy"
            requests = [r for r in requests if (r.temperature == 0.0) == greedy]
        if commitments:
            requests = [dataclasses.replace(r, commitments=True) for r in requests]
        return await audit_engine(engine, reference, requests)
    finally:
        await engine.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--small", default="models/tiny-small",
                        help="the smaller model (built here with --size small if missing)")
    parser.add_argument("--answers", type=int, default=60, help="answers audited per mode")
    parser.add_argument("--tokens", type=int, default=40, help="max tokens per answer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the challenges")
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                        help="the honest engine audited (vllm: greedy and seeded rows)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3,
                        help="vllm: the share of the GPU vLLM may take")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 120))
    if args.engine == "vllm":
        MODES[:] = VLLM_MODES
    elif not (Path(args.small) / "model.safetensors").exists():
        with console.status(f"building the smaller model into {args.small}"):
            build_tiny_model(Path(args.small), SIZES["small"])
    reference = load_model(args.model)
    where = "tiny model, CPU" if args.engine == "transformers" else f"vllm, {args.model}"
    table = Table(title=f"audits of {args.answers} fresh challenges per mode ({where})")
    for column in ("node serves", "flagged answers", "rate", "tokens audited",
                   "first flag at token", "generate ms/token", "audit ms/token",
                   "audit / generate"):
        table.add_column(column, justify="left" if column == "node serves" else "right")
    honest: Tally | None = None
    for mode in MODES:
        name, plus, _ = (mode or "").partition("+")
        cheat = f"smaller:{args.small}" if name == "smaller" else (name or None)
        label = f"{name or 'honest'}{' + commitments' if plus else ''}"
        with console.status(label):
            r = asyncio.run(run(args.model, reference, cheat, args.answers, args.tokens,
                                args.seed, bool(plus), args.gpu_memory_utilization))
        honest = honest or r
        generate_ms, audit_ms = r.generate_s * 1000 / r.tokens, r.audit_s * 1000 / r.tokens
        table.add_row(label, f"{r.flagged}/{r.answers}", f"{r.rate:.0%}",
                      str(r.tokens), str(r.first_flag_at or "-"), f"{generate_ms:.2f}",
                      f"{audit_ms:.2f}", f"{audit_ms / generate_ms:.3f}")
    console.print(table)
    assert honest is not None
    ratio = honest.audit_s / honest.generate_s
    console.print(f"honest false positives: {honest.flagged} of {honest.answers} answers. "
                  f"Verifier compute per audited token / generation compute per token: "
                  f"{ratio:.3f}; auditing 2% of the tokens costs the verifier about "
                  f"{0.02 * ratio:.2%} of their generation compute.")


if __name__ == "__main__":
    main()
