"""Ragged batches through a ``transformers`` model: many sequences in one forward pass.

The tokens of every sequence in a step are laid out one per batch row
(``input_ids`` of shape ``[tokens, 1]``, each with its own ``position_ids``), so
everything but attention (embeddings, norms, projections, MLPs, the LM head, and
peft's per-row adapters) runs once for the whole batch. Attention goes through an
attention function registered with ``transformers``' ``AttentionInterface``: for
each sequence it appends the step's keys and values to that sequence's own
:class:`~agoranet.engines.kvcache.SequenceCache` and attends over exactly its own
past, with the shapes it would have alone. Without a :class:`RaggedBatch` in the
call (anyone else using the same weights), the function is the model's original
attention and mask, so other callers see no difference.

Batch invariance: CPU matrix products pick their kernels by the number of rows, so a
row's result differs in the last bits between a batch of 1 and a batch of 16. The
batched engine pads a pass to the row count from which the model's linear layers give
each row the same bits (measured, :mod:`agoranet.engines.rowpad`); padding rows belong
to no segment, and their attention output is zero. Where no such count exists, under
:class:`InvariantLinear` every linear layer computes each row as its own product (a
batched matmul of one-row products). Either way a row gets the same bits whatever else
is in the batch: greedy answers are then identical alone and in any batch. Decoding
rows (one position per sequence) attend one sequence at a time with few tensor
operations each (:func:`_attend_one_each`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from agoranet.engines.kvcache import SequenceCache

__all__ = ["InvariantLinear", "RaggedBatch", "Segment", "enable_ragged", "invariant_linear",
           "ragged_unsupported", "rows_match_alone"]

_PREFIX = "agoranet_ragged+"


@dataclass(frozen=True, slots=True)
class Segment:
    """One sequence's rows in a step: ``length`` consecutive rows from ``start``."""

    cache: SequenceCache
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class RaggedBatch:
    """The sequences of one forward pass, in row order (passed as ``ragged_batch=``)."""

    segments: tuple[Segment, ...]
    decoding: bool = False  # every segment one row, in row order from 0 (one new position each)


def _attend(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            batch: RaggedBatch, scaling: float | None) -> torch.Tensor:
    layer = int(module.layer_idx)
    groups = query.shape[1] != key.shape[1]
    rows = query.shape[0]  # beyond the segments' rows: padding, its output zeros
    with torch._C.DisableTorchFunction():  # plain tensor ops: no InvariantLinear round trips
        if batch.decoding:
            return _attend_one_each(layer, query, key, value, batch, scaling, groups)
        out = _attend_spans(layer, query, key, value, batch, scaling, groups)
        if out.shape[0] < rows:
            out = torch.cat([out, out.new_zeros((rows - out.shape[0], *out.shape[1:]))])
    return out


@functools.lru_cache(maxsize=32)
def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Padding rows' attention output, made once per shape (never written to)."""
    with torch.inference_mode():
        return torch.zeros(shape, dtype=dtype, device=device)


def _attend_one_each(layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     batch: RaggedBatch, scaling: float | None, groups: bool) -> torch.Tensor:
    """Decoding: one new position per sequence (row ``i``: ``[1, heads, 1, dim]``, the
    shapes it has alone); padding rows after the sequences' get zeros."""
    queries = torch.split(query, 1)
    pairs = torch.stack((key, value), dim=1).unsqueeze(2).unbind(0)  # [2, 1, kv, 1, dim]
    outputs = []
    for segment in batch.segments:
        keys, values = segment.cache.append_one(layer, pairs[segment.start])
        outputs.append(F.scaled_dot_product_attention(
            queries[segment.start], keys, values, scale=scaling, enable_gqa=groups))
    padding = query.shape[0] - len(outputs)
    if padding:
        outputs.append(_zeros((padding, *outputs[0].shape[1:]), query.dtype, query.device))
    return torch.cat(outputs).transpose(1, 2)  # [n, heads, 1, dim] -> [n, 1, heads, dim]


def _attend_spans(layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  batch: RaggedBatch, scaling: float | None, groups: bool) -> torch.Tensor:
    """Segments of any length, each with the shapes it would have alone."""
    outputs: list[torch.Tensor] = []
    for segment in batch.segments:
        rows = slice(segment.start, segment.start + segment.length)
        # [n, heads, 1, dim] -> [1, heads, n, dim]: the sequence's own shapes
        keys, values = segment.cache.append(layer, key[rows].transpose(0, 2),
                                            value[rows].transpose(0, 2))
        total, new = keys.shape[2], segment.length
        mask = None  # one query sees all its past; a first chunk is plainly causal
        if 1 < new < total:  # a later chunk of a prompt: causal, offset by its past
            seen = torch.arange(total, device=query.device)
            mask = (seen[None, :] <= seen[total - new:, None])[None, None]
        out = F.scaled_dot_product_attention(
            query[rows].transpose(0, 2), keys, values, attn_mask=mask,
            is_causal=mask is None and new > 1, scale=scaling, enable_gqa=groups)
        outputs.append(out.permute(2, 0, 1, 3))  # [1, heads, n, dim] -> [n, 1, heads, dim]
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def _ragged_attention(original: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0,
                  scaling: float | None = None, **kwargs: Any
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = kwargs.pop("ragged_batch", None)
        if isinstance(batch, RaggedBatch):
            return _attend(module, query, key, value, batch, scaling), None
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        fallback = ALL_ATTENTION_FUNCTIONS[original]
        result: tuple[torch.Tensor, torch.Tensor | None] = fallback(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            **kwargs)
        return result

    return attention


def ragged_unsupported(model: Any) -> str | None:
    """Why ``model`` cannot run ragged batches (None: it can)."""
    if not getattr(type(model), "_supports_attention_backend", False):
        return f"{type(model).__name__} does not use transformers' attention interface"
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = model.config
    original = str(config._attn_implementation)
    if not original.startswith(_PREFIX) and original not in ALL_ATTENTION_FUNCTIONS:
        return f"its attention ({original}) is not one transformers shares by name"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention is not batched yet"
    layer_types = getattr(config, "layer_types", None) or ()
    if any(kind != "full_attention" for kind in layer_types):
        return "only full-attention layers are batched"
    if not all(hasattr(m, "layer_idx") for m in model.modules()
               if type(m).__name__.endswith("Attention")):
        return "its attention layers do not know their index"
    return None


def enable_ragged(model: Any) -> None:
    """Route ``model``'s attention through the ragged function (idempotent; without a
    :class:`RaggedBatch` it behaves as the model's original attention)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import AttentionInterface

    original = str(model.config._attn_implementation)
    if original.startswith(_PREFIX):
        return
    name = _PREFIX + original
    AttentionInterface.register(name, _ragged_attention(original))
    mask_name = original if original in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping else "sdpa"
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_name])
    model.config._attn_implementation = name
    for sub in model.modules():  # submodules may hold their own config object
        config = getattr(sub, "config", None)
        if config is not None and config is not model.config \
                and getattr(config, "_attn_implementation", None) == original:
            config._attn_implementation = name


def invariant_linear(x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with every row computed as a product of its own (same bits in any batch)."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.bmm(rows.unsqueeze(1), weight.t().unsqueeze(0).expand(rows.shape[0], -1, -1))
    out = out.squeeze(1)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class InvariantLinear(TorchFunctionMode):
    """Within it, linear layers compute rows independently (see :func:`invariant_linear`)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear or func is torch._C._nn.linear:
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            return invariant_linear(args[0], args[1], bias)
        return func(*args, **kwargs)


def rows_match_alone(model: Any) -> bool:
    """Whether a one-row ``F.linear`` (what a batch of one runs outside
    :class:`InvariantLinear`) gives the bits of :func:`invariant_linear` on ``model``'s
    linear layers, with and without their bias."""
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            weight = module.weight
            x = torch.randn((1, weight.shape[1]), generator=generator).to(weight)
            if not torch.equal(F.linear(x, weight, module.bias),
                               invariant_linear(x, weight, module.bias)):
                return False
    return True
