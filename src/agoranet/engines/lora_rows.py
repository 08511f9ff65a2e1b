"""Many LoRA adapters in one forward pass: each batch row with its own adapter.

In the spirit of Punica/S-LoRA's gathered LoRA matmul: per LoRA layer, the ``A`` and
``B`` matrices of every loaded adapter are stacked once (rank padded with zeros, a
zero entry for the bare base model), and a pass gathers each row's pair and applies
it with two batched matmuls, whatever the number of adapters in the batch (peft's
own mixed batches loop over the adapters in every layer). The base layer runs with
the adapters disabled and the hook adds ``scaling * B(A(x))`` row by row; each row's
product is computed on its own, so a row gets the same bits alone or in any batch.
While the rows keep their adapters from one pass to the next (most steps of a running
batch), the gathered pairs are kept and reused (within :data:`CACHE_BYTES`): a step then
copies no adapter weights at all, and the products are the same bits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = ["CACHE_BYTES", "GatheredLora", "gatherable"]

# the most bytes of gathered per-row adapter weights kept from one pass to the next
CACHE_BYTES = 64 * 2**20


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
    """The stacked adapters of a set of LoRA layers, and the hooks that apply them.

    Per layer, ``A`` is stacked transposed (``[adapters + 1, in, rank]``) and ``B``
    transposed with the adapter's scaling folded in (``[adapters + 1, rank, out]``), so
    a pass costs each layer two gathers (none while the rows' adapters stay the same)
    and two batched products (the second adding into the base output). The hooks stay
    registered while the layers stay the same; outside :meth:`rows` they add nothing.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] = ()
        self._slots: dict[str, int] = {}
        self._stacks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handles: list[Any] = []
        self._index: torch.Tensor | None = None  # each row's slot, during a pass
        # Each layer's gathered (A, B) for the rows' slots of the last pass, reused while the
        # rows keep their adapters (most steps of a running batch); kept only while their
        # bytes stay within CACHE_BYTES
        self._rows_key: tuple[Any, ...] = ()
        self._gathered: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self._keep = False

    def _prepare(self, layers: Sequence[Any], names: Sequence[str]) -> None:
        key = (tuple(id(layer) for layer in layers), tuple(names))
        if key == self._key:
            return
        self._slots = {name: index + 1 for index, name in enumerate(names)}  # 0: none
        self._stacks = []
        with torch.no_grad():
            for layer in layers:
                base = layer.base_layer
                present = [name for name in names if name in layer.lora_A]
                rank = max((layer.lora_A[name].weight.shape[0] for name in present), default=1)
                weight = base.weight
                a = weight.new_zeros((len(names) + 1, base.in_features, rank))
                b = weight.new_zeros((len(names) + 1, rank, base.out_features))
                for name in present:
                    slot, lora_a = self._slots[name], layer.lora_A[name].weight
                    a[slot, :, : lora_a.shape[0]] = lora_a.t()
                    b[slot, : lora_a.shape[0]] = (layer.lora_B[name].weight
                                                  * float(layer.scaling[name])).t()
                self._stacks.append((a, b))
        self._hook(layers)
        self._key = key

    def _hook(self, layers: Sequence[Any]) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for place, (layer, (a, b)) in enumerate(zip(layers, self._stacks, strict=True)):

            def add(module: Any, args: tuple[Any, ...], output: torch.Tensor,
                    a: torch.Tensor = a, b: torch.Tensor = b, place: int = place
                    ) -> torch.Tensor | None:
                index = self._index
                if index is None:  # not a gathered pass
                    return None
                pair = self._gathered[place]
                if pair is None:  # each row's own A and B (copies: the same bits)
                    pair = (a.index_select(0, index), b.index_select(0, index))
                    if self._keep:
                        self._gathered[place] = pair
                x = args[0]
                rows = x.reshape(index.shape[0], 1, x.shape[-1])
                if rows.dtype != a.dtype:
                    rows = rows.to(a.dtype)
                down = torch.bmm(rows, pair[0])
                if output.dtype == b.dtype:  # the base output plus each row's own product
                    base = output.reshape(index.shape[0], 1, output.shape[-1])
                    return torch.baddbmm(base, down, pair[1]).view(output.shape)
                up = torch.bmm(down, pair[1])
                return output + up.view(output.shape).to(output.dtype)

            self._handles.append(layer.register_forward_hook(add))

    @contextlib.contextmanager
    def rows(self, layers: Sequence[Any], loaded: Sequence[str],
             idents: Sequence[str | None]) -> Iterator[None]:
        """Within it, a forward pass runs batch row ``i`` with adapter ``idents[i]`` (None:
        the base model), every adapter among ``loaded``. The layers' own adapters are
        disabled meanwhile (the caller sets them again after)."""
        self._prepare(layers, loaded)
        device = layers[0].base_layer.weight.device if layers else None
        slots = [self._slots[i] if i is not None else 0 for i in idents]
        key = (self._key, tuple(slots))
        if key != self._rows_key:  # other rows or other stacks: gather again
            self._rows_key = key
            self._gathered = [None] * len(self._stacks)
            size = sum(len(slots) * (a[0].numel() + b[0].numel()) * a.element_size()
                       for a, b in self._stacks)
            self._keep = size <= CACHE_BYTES
        self._index = torch.tensor(slots, dtype=torch.long, device=device)
        for layer in layers:
            layer._disable_adapters = True
        try:
            yield
        finally:
            self._index = None
