"""One sequence's key/value cache for the batched engine: per layer, grown by doubling.

Each sequence of a batch keeps its own keys and values (per layer one tensor
``[2, 1, kv_heads, capacity, head_dim]``, read as ``[1, kv_heads, length, head_dim]``
views), so its attention is computed over exactly its own past,
with the same shapes whatever else is in the batch. The storage grows by doubling
(amortised O(1) per token) and is freed with the sequence.
"""

from __future__ import annotations

import torch

__all__ = ["SequenceCache"]


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class SequenceCache:
    """Keys and values of one sequence, layer by layer (per layer one tensor
    ``[2, 1, kv_heads, capacity, head_dim]``: keys, then values)."""

    def __init__(self, initial: int = 64) -> None:
        self._initial = max(1, initial)
        self._stores: list[torch.Tensor | None] = []
        self._lengths: list[int] = []
        self.nbytes = 0  # bytes held (the capacity, not just the used part)

    def length(self, layer: int = 0) -> int:
        """Positions stored for ``layer``."""
        return self._lengths[layer] if layer < len(self._lengths) else 0

    def _room(self, layer: int, new: int, like: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The layer's storage with room for ``new`` more positions, and its used length."""
        while len(self._stores) <= layer:
            self._stores.append(None)
            self._lengths.append(0)
        stored, used = self._stores[layer], self._lengths[layer]
        if stored is None or used + new > stored.shape[3]:
            capacity = max(self._initial, stored.shape[3] if stored is not None else 0)
            while capacity < used + new:
                capacity *= 2
            grown = like.new_empty((2, 1, like.shape[-3], capacity, like.shape[-1]))
            if stored is not None:
                grown[:, :, :, :used] = stored[:, :, :, :used]
                self.nbytes -= _size(stored)
            self.nbytes += _size(grown)
            stored = self._stores[layer] = grown
        return stored, used

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``keys``/``values`` (``[1, kv_heads, new, head_dim]``) after the layer's past;
        return all of them so far (views, ``[1, kv_heads, length, head_dim]``)."""
        new = keys.shape[2]
        stored, used = self._room(layer, new, keys)
        stored[0, :, :, used : used + new] = keys
        stored[1, :, :, used : used + new] = values
        self._lengths[layer] = used + new
        return stored[0, :, :, : used + new], stored[1, :, :, : used + new]

    def append_one(self, layer: int, pair: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store one position's keys and values (``pair``: ``[2, 1, kv_heads, 1,
        head_dim]``) after the layer's past; return all keys and all values so far
        (views, ``[1, kv_heads, length, head_dim]``)."""
        stored, used = self._room(layer, 1, pair)
        stored[:, :, :, used : used + 1] = pair
        self._lengths[layer] = used + 1
        return stored[:, :, :, : used + 1].unbind(0)
