"""Embeddings in the transformers engine: pooling, normalisation, validation.

The tiny embedding model is a small random BERT in the sentence-transformers layout;
sentence-transformers itself is the independent reference for its vectors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from agoranet.api.embeddings import MAX_INPUTS, EmbeddingRequest, encode_vector
from agoranet.engines import capabilities
from agoranet.engines.embeddings import EmbeddingJob
from agoranet.engines.hf import TransformersEngine, transformers_engine
from agoranet.engines.hf_embeddings import BATCH, TransformersEmbeddingEngine
from agoranet.engines.pooling import Pooling, is_embedding_model, normalize, pool, read_pooling
from agoranet.errors import (
    ConfigError,
    ContextLengthError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
)

TEXTS = ["hello", "the river runs long and wide past the old town", "a", "Tell me a story."]


@pytest.fixture(scope="module")
def engine(embedding_model: Path) -> TransformersEmbeddingEngine:
    made = transformers_engine(str(embedding_model), device="cpu")  # as the reference runs
    assert isinstance(made, TransformersEmbeddingEngine)
    return made


async def vectors(engine: Any, inputs: Any, model: str = "tiny-embed", **kw: Any
                  ) -> tuple[list[list[float]], int]:
    prepared = await engine.prepare_embeddings(EmbeddingJob(model, inputs, **kw))
    result = await engine.embed(prepared)
    assert result.prompt_tokens == prepared.prompt_tokens
    return result.vectors, result.prompt_tokens


# ------------------------------------------------------------------ pooling


def test_mean_pooling_counts_only_the_tokens_the_mask_keeps() -> None:
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(states, mask, "mean").tolist() == [[2.0, 3.0], [7.0, 8.0]]
    assert pool(states, mask, "last").tolist() == [[3.0, 4.0], [9.0, 10.0]]
    assert pool(states, mask, "cls").tolist() == [[1.0, 2.0], [5.0, 6.0]]


def test_normalize_gives_unit_rows_and_keeps_zero_rows() -> None:
    out = normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(out.numpy(), [[0.6, 0.8], [0.0, 0.0]])


def test_the_sentence_transformers_layout_is_read(embedding_model: Path, tmp_path: Path) -> None:
    assert is_embedding_model(embedding_model)
    assert read_pooling(embedding_model) == Pooling("mean", True, 128)
    assert not is_embedding_model(tmp_path)
    copy = tmp_path / "m"
    shutil.copytree(embedding_model, copy)
    config = copy / "1_Pooling" / "config.json"
    pooling = json.loads(config.read_text())
    config.write_text(json.dumps({**pooling, "pooling_mode_mean_tokens": False,
                                  "pooling_mode_max_tokens": True}))
    with pytest.raises(ModelLoadError, match="pooling"):
        read_pooling(copy)  # max pooling: not computed here, refused at load
    config.write_text(json.dumps(pooling))
    modules = json.loads((copy / "modules.json").read_text())
    modules.insert(2, {"idx": 3, "name": "3", "path": "3_Dense",
                       "type": "sentence_transformers.models.Dense"})
    (copy / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="Dense"):
        read_pooling(copy)  # a projection it would leave out: refused, not ignored


# ------------------------------------------------------- the embedding model


def test_an_embedding_model_offers_embeddings_only(engine: TransformersEmbeddingEngine) -> None:
    [info] = engine.models()
    assert info.name == "tiny-embed"
    assert info.capabilities == frozenset({capabilities.EMBEDDINGS})
    assert info.context_length == 128 and info.model_sha256


async def test_vectors_equal_sentence_transformers(engine: TransformersEmbeddingEngine,
                                                   embedding_model: Path) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(embedding_model), device="cpu").encode(TEXTS)
    ours, tokens = await vectors(engine, TEXTS)
    assert np.abs(np.array(ours) - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(np.array(ours), axis=1), 1.0)
    tokenizer = engine.embedder.tokenizer
    assert tokens == sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)


async def test_a_batch_gives_each_input_the_vector_it_has_alone(
        engine: TransformersEmbeddingEngine) -> None:
    many = [TEXTS[i % len(TEXTS)] + " " * (i % 3) + str(i) for i in range(BATCH + 5)]
    together, _ = await vectors(engine, many)
    for index in (0, 7, BATCH + 4):
        [alone], _ = await vectors(engine, [many[index]])
        assert np.abs(np.array(alone) - np.array(together[index])).max() < 1e-5


async def test_token_ids_embed_as_their_text(engine: TransformersEmbeddingEngine) -> None:
    ids = [engine.embedder.tokenizer(t)["input_ids"] for t in TEXTS[:2]]
    from_ids, tokens = await vectors(engine, ids)
    from_text, _ = await vectors(engine, TEXTS[:2])
    assert tokens == sum(len(i) for i in ids)
    assert np.abs(np.array(from_ids) - np.array(from_text)).max() < 1e-6


async def test_bad_requests_are_clear_400s(engine: TransformersEmbeddingEngine) -> None:
    with pytest.raises(InvalidRequestError, match="64-dimensional") as dims:
        await vectors(engine, ["x"], dimensions=32)
    assert dims.value.param == "dimensions"
    assert (await vectors(engine, ["x"], dimensions=64))[0]  # its own size is fine
    with pytest.raises(ContextLengthError, match="input\\[1\\]"):
        await vectors(engine, ["short", "word " * 400])
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        await vectors(engine, [[1, 2, 10**6]])
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        await vectors(engine, [[-1]])
    with pytest.raises(ModelNotFoundError):
        await vectors(engine, ["x"], model="tiny")


async def test_beyond_its_queue_the_embedder_answers_429(
        engine: TransformersEmbeddingEngine) -> None:
    import asyncio

    prepared = await engine.prepare_embeddings(EmbeddingJob("tiny-embed", ["x", "y"]))
    engine.embedder.max_waiting = 1
    try:
        first, second = await asyncio.gather(engine.embed(prepared), engine.embed(prepared),
                                             return_exceptions=True)
        assert not isinstance(first, BaseException) and len(first.vectors) == 2
        assert isinstance(second, OverloadedError) and second.status_code == 429
        assert len((await engine.embed(prepared)).vectors) == 2  # room again once done
    finally:
        engine.embedder.max_waiting = 64


async def test_chat_on_an_embedding_model_is_a_404(engine: TransformersEmbeddingEngine) -> None:
    from agoranet.engines.base import GenerationRequest, Message

    with pytest.raises(ModelNotFoundError, match="embedding model"):
        await engine.prepare(GenerationRequest("tiny-embed", [Message("user", "hi")]))


# ------------------------------------------------------------- a causal LM


async def test_a_causal_lm_embeds_only_with_a_stated_pooling(tiny_loaded: Any) -> None:
    plain = TransformersEngine(loaded=tiny_loaded, max_active=1, max_queue=1)
    pooled = TransformersEngine(loaded=tiny_loaded, max_active=1, max_queue=1,
                                embedding_pooling="last")
    try:
        assert capabilities.EMBEDDINGS not in plain.models()[0].capabilities
        with pytest.raises(InvalidRequestError, match="embedding pooling"):
            await plain.prepare_embeddings(EmbeddingJob("tiny", ["hi"]))
        assert capabilities.EMBEDDINGS in pooled.models()[0].capabilities
        texts = ["Tell me about the river.", "Hi"]
        ours, tokens = await vectors(pooled, texts, model="tiny")
        # The reference: the causal LM's own forward pass, its last layer's states.
        tokenizer, model = tiny_loaded.tokenizer, tiny_loaded.model
        # float32 on CPU: a batch and a lone pass agree to rounding; bfloat16 on a GPU looser
        tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 5e-2
        for text, vector in zip(texts, ours, strict=True):
            ids = torch.tensor([tokenizer(text)["input_ids"]], device=tiny_loaded.device)
            with torch.inference_mode():
                states = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
            last = torch.nn.functional.normalize(states[0, -1].float(), dim=0).cpu()
            assert np.abs(np.array(vector) - last.numpy()).max() < tolerance
        assert tokens == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    finally:
        await plain.aclose()
        await pooled.aclose()


def test_embedding_pooling_is_checked_when_the_engine_starts(tiny_loaded: Any,
                                                             tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no-adapters"):
        TransformersEngine(loaded=tiny_loaded, embedding_pooling="mean",
                           adapters_dir=tmp_path)
    with pytest.raises(ConfigError, match="pooling must be one of"):
        TransformersEngine(loaded=tiny_loaded, embedding_pooling="max")


def test_an_embedding_model_states_its_own_pooling(embedding_model: Path) -> None:
    with pytest.raises(ConfigError, match="its own pooling"):
        transformers_engine(str(embedding_model), embedding_pooling="last")


@pytest.mark.parametrize(("options", "flag"), [
    ({"tool_call_parser": "hermes"}, "--tool-call-parser"), ({"batching": False}, "--no-batching")])
def test_generation_options_on_an_embedding_model_are_refused(
        embedding_model: Path, options: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError, match=f"embedding model: it does not use {flag}"):
        transformers_engine(str(embedding_model), **options)


def test_their_defaults_on_an_embedding_model_are_fine(embedding_model: Path) -> None:
    engine = transformers_engine(str(embedding_model), tool_call_parser=None, batching=True)
    assert isinstance(engine, TransformersEmbeddingEngine)


# -------------------------------------------------------------- wire types


def test_the_four_input_forms_and_their_limits() -> None:
    def inputs(value: Any) -> Any:
        return EmbeddingRequest(model="m", input=value).inputs()

    assert inputs("a") == ["a"]
    assert inputs(["a", "b"]) == ["a", "b"]
    assert inputs([1, 2, 3]) == [[1, 2, 3]]
    assert inputs([[1, 2], [3]]) == [[1, 2], [3]]
    for empty in ("", [], [""], [[]], [[1], []]):
        with pytest.raises(InvalidRequestError):
            inputs(empty)
    with pytest.raises(InvalidRequestError, match=str(MAX_INPUTS)):
        inputs(["a"] * (MAX_INPUTS + 1))
    for wrong in ([1.5], [True], [["a"]], {"text": "a"}, None):
        with pytest.raises(ValidationError):
            inputs(wrong)
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input="a", encoding_format="int8")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input="a", dimensions=0)


def test_base64_is_little_endian_float32() -> None:
    import base64

    encoded = encode_vector([0.5, -2.0, 1e-3], "base64")
    assert isinstance(encoded, str)
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert decoded.tolist() == [0.5, -2.0, np.float32(1e-3).item()]
    assert encode_vector([0.5], "float") == [0.5]
