"""Constrained decoding on CUDA: the mask moves to the logits' device, output stays valid
and greedy agrees with the CPU (skipped without a GPU)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "n": {"type": "integer", "minimum": 0,
                                                 "maximum": 50}},
          "required": ["name", "n"], "additionalProperties": False}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
async def test_json_schema_on_cuda(tiny_model: object, tiny_engine: TransformersEngine,
                                   dtype: str) -> None:
    gpu = TransformersEngine(loaded=load_model(str(tiny_model), device="cuda", dtype=dtype))
    form = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
    try:
        for temperature in (0.0, 1.0):
            request = GenerationRequest(model="tiny", messages=(Message("user", "Hello!"),),
                                        max_tokens=120, temperature=temperature, seed=2,
                                        response_format=form)
            text, _, finish = await collect(gpu.stream(await gpu.prepare(request)))
            assert finish.reason == "stop"
            jsonschema.validate(json.loads(text), SCHEMA)
            if temperature == 0.0 and dtype == "float32":
                on_cpu = await collect(tiny_engine.stream(await tiny_engine.prepare(request)))
                assert on_cpu[0] == text
    finally:
        await gpu.aclose()
