"""The batched engine's leaner steps (issue #17): the direct pass through the model's
modules gives the full forward's bits, and gathered LoRA weights kept from one pass to
the next give the bits of a fresh gather."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agoranet.engines.kvcache import SequenceCache
from agoranet.engines.lean_pass import LeanPass, lean_pass
from agoranet.engines.lora_rows import GatheredLora
from agoranet.engines.ragged import RaggedBatch, Segment, enable_ragged


def _full(model: Any, ids: torch.Tensor, positions: torch.Tensor,
          batch: RaggedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    output = model(input_ids=ids, position_ids=positions, use_cache=False,
                   output_hidden_states=True, ragged_batch=batch)
    return output.logits, output.hidden_states[-1]


def test_the_lean_pass_gives_the_full_forwards_bits(tiny_loaded: Any) -> None:
    model = tiny_loaded.model
    enable_ragged(model)
    lean = lean_pass(model)
    assert isinstance(lean, LeanPass)
    prompts = [list(range(5, 17)), list(range(40, 47))]
    outputs: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for name in ("full", "lean"):
            caches = [SequenceCache(), SequenceCache()]
            starts = [0, len(prompts[0])]
            chunk = RaggedBatch(tuple(Segment(cache, start, len(prompt)) for cache, start, prompt
                                      in zip(caches, starts, prompts, strict=True)))
            step = RaggedBatch(tuple(Segment(cache, i, 1) for i, cache in enumerate(caches)),
                               decoding=True)  # two decoding rows, padded to four
            passes = [
                (torch.tensor([t for p in prompts for t in p]).view(-1, 1),
                 torch.tensor([i for p in prompts for i in range(len(p))]).view(-1, 1), chunk),
                (torch.tensor([[3], [9], [0], [0]]), torch.tensor([[12], [7], [0], [0]]), step),
            ]
            outputs[name] = []
            for ids, positions, batch in passes:
                found = _full(model, ids, positions, batch) if name == "full" \
                    else lean(ids, positions, ragged_batch=batch)
                outputs[name].extend(found)
    assert len(outputs["full"]) == len(outputs["lean"]) == 4
    for full, lean_out in zip(outputs["full"], outputs["lean"], strict=True):
        assert torch.equal(full, lean_out)


def test_models_of_other_families_keep_the_full_forward(tiny_loaded: Any) -> None:
    class Other(torch.nn.Module):
        config = type("Config", (), {"model_type": "gemma"})()

    assert lean_pass(Other()) is None
    assert lean_pass(tiny_loaded.model) is not None


def test_kept_gathers_give_the_bits_of_fresh_ones(tiny_model: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from agoranet.engines.hf import load_model

    model = load_model(str(tiny_model)).model  # its own copy: peft changes it
    enable_ragged(model)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    peft = get_peft_model(model, config, adapter_name="a")
    peft.add_adapter("b", config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    lean = lean_pass(model)
    assert lean is not None

    def run(gathered: GatheredLora, idents: list[str | None]) -> torch.Tensor:
        caches = [SequenceCache() for _ in idents]
        batch = RaggedBatch(tuple(Segment(c, i, 1) for i, c in enumerate(caches)), decoding=True)
        ids = torch.arange(5, 5 + len(idents)).view(-1, 1)
        with gathered.rows(layers, ["a", "b"], idents), torch.inference_mode():
            return lean(ids, torch.zeros_like(ids), ragged_batch=batch)[0]

    rows: list[str | None] = ["a", "b", None, "a"]
    kept = GatheredLora()
    first, again = run(kept, rows), run(kept, rows)  # the second reuses the gathers
    other = run(kept, ["b", "b", "a", None])  # other rows: gathered afresh
    back = run(kept, rows)
    fresh = GatheredLora()
    assert torch.equal(first, again) and torch.equal(first, back)
    assert torch.equal(first, run(fresh, rows))
    assert torch.equal(other, run(GatheredLora(), ["b", "b", "a", None]))
    assert not torch.equal(first, run(GatheredLora(), [None] * 4))  # the adapters do act
