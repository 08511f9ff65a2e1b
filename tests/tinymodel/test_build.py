"""The tiny model builds, saves, and reloads through the same path as a Hub model."""

from __future__ import annotations

import json
from pathlib import Path

from agoranet.engines.hf import load_model
from agoranet.tinymodel import SIZES, TinySpec, build_tiny_model
from agoranet.tinymodel.grammar import dialogues


def test_grammar_is_seeded_and_varied() -> None:
    a = list(dialogues(50, seed=3))
    assert a == list(dialogues(50, seed=3))
    assert a != list(dialogues(50, seed=4))
    assert len({d[-1]["content"] for d in a}) > 40
    assert all(d[-1]["role"] == "assistant" for d in a)


def test_small_build_saves_a_loadable_model(tmp_path: Path) -> None:
    spec = TinySpec(steps=3, dialogues=300, hidden_size=32, intermediate_size=64,
                    num_heads=2, num_kv_heads=1, num_layers=1, vocab_size=400)
    report = build_tiny_model(tmp_path / "m", spec)
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert report.parameters > 10_000
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.info.name == "m"
    assert loaded.info.context_length == spec.context_length
    assert loaded.tokenizer.chat_template
    meta = json.loads((tmp_path / "m" / "agoranet-tiny.json").read_text())
    assert meta["spec"]["steps"] == 3


def test_the_same_spec_gives_the_same_weights(tmp_path: Path) -> None:
    spec = TinySpec(steps=2, dialogues=200, hidden_size=32, intermediate_size=64,
                    num_heads=2, num_kv_heads=1, num_layers=1, vocab_size=400)
    build_tiny_model(tmp_path / "a", spec)
    build_tiny_model(tmp_path / "b", spec)
    a = load_model(str(tmp_path / "a")).info.model_sha256
    b = load_model(str(tmp_path / "b")).info.model_sha256
    assert a == b


def test_the_default_tiny_model_is_a_few_million_parameters(tiny_loaded: object) -> None:
    model = tiny_loaded.model  # type: ignore[attr-defined]
    parameters = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < parameters < 10_000_000


def test_the_small_preset_shares_the_tokenizer_and_corpus(tiny_loaded: object,
                                                          small_model: Path) -> None:
    small, default = SIZES["small"], SIZES["default"]
    assert small.num_layers < default.num_layers and small.steps < default.steps
    loaded = load_model(str(small_model))
    assert loaded.tokenizer.get_vocab() == tiny_loaded.tokenizer.get_vocab()  # type: ignore[attr-defined]
    assert sum(p.numel() for p in loaded.model.parameters()) < 300_000
