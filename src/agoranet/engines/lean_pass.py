"""A ragged pass through the model's own modules, without ``transformers``' per-call setup.

A causal LM's ``forward`` does more each call than a ragged batch needs: argument
deprecation and config-default wrappers, output capturing, a causal mask (which the
ragged attention ignores) and output objects. For the model families whose top-level
forward is exactly "embed, rotary position embeddings, decoder layers, final norm, LM
head" (:data:`FAMILIES`), :class:`LeanPass` calls those same modules in that order
with the same arguments, so every number is the one the full forward computes (the
same operations on the same inputs), a step of a few rows costs less Python, and
peft's LoRA layers, hooks included, run as they do in the full forward. Other models
get None from :func:`lean_pass` and keep the full forward.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FAMILIES", "LeanPass", "lean_pass"]

# model types whose ``*Model.forward`` is embed -> rotary -> layers -> norm and whose
# ``*ForCausalLM.forward`` applies ``lm_head`` to all of it (nothing else: no embedding
# scale, no logit soft-capping)
FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


class LeanPass:
    """Embed, rotary embeddings, decoder layers, final norm, LM head: the modules of a
    :data:`FAMILIES` model called directly."""

    def __init__(self, model: Any) -> None:
        inner = model.model
        self._embed = inner.embed_tokens
        self._rotary = inner.rotary_emb
        self._layers = list(inner.layers[: model.config.num_hidden_layers])
        self._norm = inner.norm
        self._head = model.lm_head

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 **attention: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the final norm's output of a ragged pass (``attention``: the
        keyword arguments the attention function gets, e.g. ``ragged_batch``)."""
        hidden = self._embed(input_ids)
        rotary = self._rotary(hidden, position_ids=position_ids)
        for layer in self._layers:
            hidden = layer(hidden, attention_mask=None, position_ids=position_ids,
                           position_embeddings=rotary, use_cache=False, **attention)
        hidden = self._norm(hidden)
        return self._head(hidden), hidden


def lean_pass(model: Any) -> LeanPass | None:
    """A :class:`LeanPass` over ``model``'s modules, or None where its forward is not
    known to be just those (then the caller runs the full forward)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in FAMILIES:
        return None
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, name) for name in ("embed_tokens", "rotary_emb", "layers", "norm")):
        return None
    if not hasattr(model, "lm_head") or getattr(config, "final_logit_softcapping", None):
        return None
    return LeanPass(model)
