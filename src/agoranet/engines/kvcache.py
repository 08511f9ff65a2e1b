"""One sequence's key/value cache for the batched engine: per layer, grown by doubling.

Each sequence of a batch keeps its own keys and values (``[1, kv_heads, length,
head_dim]`` per layer), so its attention is computed over exactly its own past,
with the same shapes whatever else is in the batch. The storage grows by doubling
(amortised O(1) per token) and is freed with the sequence.
"""

from __future__ import annotations

import torch

__all__ = ["SequenceCache"]


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class SequenceCache:
    """Keys and values of one sequence, layer by layer."""

    def __init__(self, initial: int = 64) -> None:
        self._initial = max(1, initial)
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self._lengths: dict[int, int] = {}
        self.nbytes = 0  # bytes held (the capacity, not just the used part)

    def length(self, layer: int = 0) -> int:
        """Positions stored for ``layer``."""
        return self._lengths.get(layer, 0)

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``keys``/``values`` (``[1, kv_heads, new, head_dim]``) after the layer's past;
        return all of them so far (views, ``[1, kv_heads, length, head_dim]``)."""
        new = keys.shape[2]
        used = self._lengths.get(layer, 0)
        stored_k, stored_v = self._keys.get(layer), self._values.get(layer)
        if stored_k is None or stored_v is None or used + new > stored_k.shape[2]:
            capacity = max(self._initial, stored_k.shape[2] if stored_k is not None else 0)
            while capacity < used + new:
                capacity *= 2
            grown_k = keys.new_empty((*keys.shape[:2], capacity, keys.shape[3]))
            grown_v = values.new_empty((*values.shape[:2], capacity, values.shape[3]))
            if stored_k is not None and stored_v is not None:
                grown_k[:, :, :used] = stored_k[:, :, :used]
                grown_v[:, :, :used] = stored_v[:, :, :used]
                self.nbytes -= _size(stored_k) + _size(stored_v)
            self.nbytes += _size(grown_k) + _size(grown_v)
            stored_k, stored_v = grown_k, grown_v
            self._keys[layer], self._values[layer] = stored_k, stored_v
        stored_k[:, :, used : used + new] = keys
        stored_v[:, :, used : used + new] = values
        self._lengths[layer] = used + new
        return stored_k[:, :, : used + new], stored_v[:, :, : used + new]
