"""The transformers engine on CUDA agrees with the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


async def test_greedy_text_matches_cpu(tiny_model: object, tiny_engine: TransformersEngine) -> None:
    gpu = TransformersEngine(loaded=load_model(str(tiny_model), device="cuda", dtype="float32"))
    request = GenerationRequest(model="tiny", messages=(Message("user", "Hello!"),),
                                max_tokens=20, temperature=0.0)
    try:
        on_gpu = await collect(gpu.stream(await gpu.prepare(request)))
        on_cpu = await collect(tiny_engine.stream(await tiny_engine.prepare(request)))
        assert on_gpu[0] == on_cpu[0]
    finally:
        await gpu.aclose()
