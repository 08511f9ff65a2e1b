"""Many LoRA adapters in one forward pass: each batch row with its own adapter.

In the spirit of Punica/S-LoRA's gathered LoRA matmul: per LoRA layer, the ``A`` and
``B`` matrices of every loaded adapter are stacked once (rank padded with zeros, a
zero entry for the bare base model), and a pass gathers each row's pair and applies
it with two batched matmuls, whatever the number of adapters in the batch (peft's
own mixed batches loop over the adapters in every layer). The base layer runs with
the adapters disabled and the hook adds ``scaling * B(A(x))`` row by row; each row's
product is computed on its own, so a row gets the same bits alone or in any batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = ["GatheredLora", "gatherable"]


def gatherable(layers: Sequence[Any]) -> bool:
    """Whether every LoRA layer is a plain linear LoRA (no DoRA or other variant, no
    embedding or convolution adapters), which the gathered product computes."""
    for layer in layers:
        if getattr(layer, "lora_variant", None) or getattr(layer, "lora_embedding_A", None):
            return False
        if not isinstance(getattr(layer, "base_layer", None), torch.nn.Linear):
            return False
    return True


class GatheredLora:
    """The stacked adapters of a set of LoRA layers, and the hooks that apply them."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] = ()
        self._slots: dict[str, int] = {}
        self._stacks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _prepare(self, layers: Sequence[Any], names: Sequence[str]) -> None:
        key = (tuple(id(layer) for layer in layers), tuple(names))
        if key == self._key:
            return
        self._slots = {name: index + 1 for index, name in enumerate(names)}  # 0: none
        self._stacks = []
        for layer in layers:
            base = layer.base_layer
            present = [name for name in names if name in layer.lora_A]
            rank = max((layer.lora_A[name].weight.shape[0] for name in present), default=1)
            weight = base.weight
            a = weight.new_zeros((len(names) + 1, rank, base.in_features))
            b = weight.new_zeros((len(names) + 1, base.out_features, rank))
            scale = weight.new_zeros(len(names) + 1)
            for name in present:
                slot, lora_a = self._slots[name], layer.lora_A[name].weight
                a[slot, : lora_a.shape[0]] = lora_a
                b[slot, :, : lora_a.shape[0]] = layer.lora_B[name].weight
                scale[slot] = float(layer.scaling[name])
            self._stacks.append((a, b, scale))
        self._key = key

    @contextlib.contextmanager
    def rows(self, layers: Sequence[Any], loaded: Sequence[str],
             idents: Sequence[str | None]) -> Iterator[None]:
        """Within it, a forward pass runs batch row ``i`` with adapter ``idents[i]`` (None:
        the base model), every adapter among ``loaded``. The layers' own adapters are
        disabled meanwhile (the caller sets them again after)."""
        self._prepare(layers, loaded)
        device = layers[0].base_layer.weight.device if layers else None
        index = torch.tensor([self._slots[i] if i is not None else 0 for i in idents],
                             dtype=torch.long, device=device)
        handles = []
        for layer, (a, b, scale) in zip(layers, self._stacks, strict=True):
            layer._disable_adapters = True

            def add(module: Any, args: tuple[Any, ...], output: torch.Tensor,
                    a: torch.Tensor = a, b: torch.Tensor = b, scale: torch.Tensor = scale
                    ) -> torch.Tensor:
                x = args[0]
                rows = x.reshape(index.shape[0], 1, x.shape[-1]).to(a.dtype)
                down = torch.bmm(rows, a.index_select(0, index).transpose(1, 2))
                up = torch.bmm(down, b.index_select(0, index).transpose(1, 2))
                delta = up * scale.index_select(0, index).view(-1, 1, 1)
                return output + delta.view(output.shape).to(output.dtype)

            handles.append(layer.register_forward_hook(add))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
