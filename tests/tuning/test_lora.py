"""Training measurably changes the model; serving applies exactly the adapter asked for."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.errors import ModelNotFoundError
from agoranet.tuning.adapter import MANIFEST, adapter_model_name, pack_adapter, read_adapter
from agoranet.tuning.housestyle import house_style_examples

HELD_OUT_FACTOR = 3.0  # held-out loss must fall at least this much


def engine_with(model_dir: Path, store: Path, *adapters: Path) -> tuple[TransformersEngine, list[str]]:
    """An engine on its own copy of the base model: LoRA layers are injected into it."""
    engine = TransformersEngine(loaded=load_model(str(model_dir)), adapters_dir=store,
                                max_active=8)
    ids = [engine.add_adapter(pack_adapter(a), 10**8).id for a in adapters]
    return engine, ids


async def answer(engine: TransformersEngine, model: str, question: str) -> str:
    request = GenerationRequest(model=model, messages=(Message("user", question),),
                                max_tokens=60, temperature=0.0)
    return (await collect(engine.stream(await engine.prepare(request))))[0]


def test_held_out_loss_falls_and_manifest_records_it(house_adapter: Path, tiny_loaded) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((house_adapter / MANIFEST).read_text())
    assert manifest["base_model_sha256"] == tiny_loaded.info.model_sha256
    assert manifest["heldout_loss_before"] / manifest["heldout_loss_after"] >= HELD_OUT_FACTOR
    assert len(manifest["data_sha256"]) == 64 and manifest["rank"] == 8


async def test_greedy_answers_match_training_far_more_often(
    house_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    engine, (ident,) = engine_with(tiny_model, tmp_path, house_adapter)
    try:
        pairs = [(e["messages"][0]["content"], e["messages"][1]["content"])
                 for e in house_style_examples()]
        tuned = adapter_model_name("tiny", ident)
        base_hits = sum([await answer(engine, "tiny", q) == a for q, a in pairs])
        tuned_hits = sum([await answer(engine, tuned, q) == a for q, a in pairs])
    finally:
        await engine.aclose()
    print(f"exact training answers: base {base_hits}/{len(pairs)}, adapter {tuned_hits}/{len(pairs)}")
    assert base_hits == 0
    assert tuned_hits >= len(pairs) // 2


async def test_two_adapters_and_base_interleaved_equal_solo_runs(
    house_adapter: Path, brief_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    questions = ["Tell me about the park.", "Where is the dog?", "Hello!", "Tell me a story."]
    engine, ids = engine_with(tiny_model, tmp_path / "both", house_adapter, brief_adapter)
    models = ["tiny", *(adapter_model_name("tiny", i) for i in ids)]
    try:
        jobs = [(m, q) for q in questions for m in models]
        together = await asyncio.gather(*(answer(engine, m, q) for m, q in jobs))
    finally:
        await engine.aclose()
    solo: dict[tuple[str, str], str] = {}
    for adapter_dir, model in [(None, "tiny"), (house_adapter, models[1]),
                               (brief_adapter, models[2])]:
        store = tmp_path / f"solo-{model[-6:]}"
        single, _ = engine_with(tiny_model, store, *([adapter_dir] if adapter_dir else []))
        try:
            for q in questions:
                solo[(model, q)] = await answer(single, model, q)
        finally:
            await single.aclose()
    assert dict(zip(jobs, together, strict=True)) == solo
    # The three models really differ, so the comparison means something.
    assert len({solo[(m, "Tell me about the park.")] for m in models}) == 3


async def test_lru_keeps_at_most_capacity_loaded(
    house_adapter: Path, brief_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    engine = TransformersEngine(loaded=load_model(str(tiny_model)), adapters_dir=tmp_path,
                                max_adapters=1)
    ids = [engine.add_adapter(pack_adapter(a), 10**8).id for a in (house_adapter, brief_adapter)]
    try:
        first = await answer(engine, adapter_model_name("tiny", ids[0]), "Hello!")
        await answer(engine, adapter_model_name("tiny", ids[1]), "Hello!")
        again = await answer(engine, adapter_model_name("tiny", ids[0]), "Hello!")
        stats = engine.stats()
    finally:
        await engine.aclose()
    assert first == again
    assert stats["adapters_loaded"] == 1
    assert stats["adapter_loads"] == 3 and stats["adapter_evictions"] == 2


async def test_a_stored_adapter_for_other_base_weights_is_skipped_not_fatal(
    house_adapter: Path, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node whose adapter store still holds an adapter trained on the weights it served
    before (the model was rebuilt) starts, serves the others and says which it skipped."""
    store = tmp_path / "store"
    stale = store / "stale"
    shutil.copytree(house_adapter, stale)
    manifest = json.loads((stale / MANIFEST).read_text())
    manifest["base_model_sha256"] = "f" * 64
    (stale / MANIFEST).write_text(json.dumps(manifest))
    fine = read_adapter(house_adapter)
    shutil.copytree(house_adapter, store / fine.id)
    with caplog.at_level("WARNING", logger="agoranet.engines.adapters"):
        engine = TransformersEngine(loaded=load_model(str(tiny_model)), adapters_dir=store)
    try:
        assert [a.id for a in engine.list_adapters()] == [fine.id]
        assert "trained on base weights" in caplog.text
        assert stale.exists()  # the operator's files are left alone
    finally:
        await engine.aclose()


async def test_unknown_adapter_and_foreign_base(
    house_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    engine = TransformersEngine(loaded=load_model(str(tiny_model)), adapters_dir=tmp_path / "store")
    try:
        with pytest.raises(ModelNotFoundError, match="not on this node"):
            await engine.prepare(GenerationRequest(model="tiny@adapter:" + "0" * 64, prompt="x"))
        foreign = tmp_path / "foreign"
        shutil.copytree(house_adapter, foreign)
        manifest = json.loads((foreign / MANIFEST).read_text())
        manifest["base_model_sha256"] = "f" * 64
        (foreign / MANIFEST).write_text(json.dumps(manifest))
        from agoranet.errors import AdapterError

        with pytest.raises(AdapterError, match="trained on base weights"):
            engine.add_adapter(pack_adapter(foreign), 10**8)
        assert engine.list_adapters() == []
        assert not [p for p in (tmp_path / "store").iterdir() if not p.name.startswith(".")]
        assert read_adapter(foreign).id != read_adapter(house_adapter).id
    finally:
        await engine.aclose()
