"""The llamacpp engine: skipped unless the extra is installed and a GGUF file is given."""

from __future__ import annotations

import importlib.util
import os

import pytest

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.registry import create_engine
from agoranet.errors import ModelLoadError

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
GGUF = os.environ.get("AGORANET_TEST_GGUF")


@pytest.mark.skipif(HAVE_LLAMA_CPP, reason="llama-cpp-python is installed")
def test_without_the_extra_the_error_says_what_to_install() -> None:
    with pytest.raises(ModelLoadError, match=r"agoranet\[llamacpp\]"):
        create_engine("llamacpp", model="model.gguf")


@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="needs the 'llamacpp' extra")
def test_a_non_gguf_path_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="gguf"):
        create_engine("llamacpp", model="weights.safetensors")


@pytest.mark.skipif(not (HAVE_LLAMA_CPP and GGUF), reason="needs the extra and AGORANET_TEST_GGUF")
async def test_greedy_chat_is_repeatable() -> None:
    engine = create_engine("llamacpp", model=GGUF)
    try:
        name = engine.models()[0].name
        request = GenerationRequest(model=name, messages=(Message("user", "Hello!"),),
                                    max_tokens=16, temperature=0.0)
        first = await collect(engine.stream(await engine.prepare(request)))
        second = await collect(engine.stream(await engine.prepare(request)))
        assert first[0] == second[0] and first[2].completion_tokens > 0
    finally:
        await engine.aclose()
