"""Many LoRA adapters on one base model, loaded on demand, least recently used evicted.

All changes to the model happen on the engine's worker thread (``activate`` is
called at the start of each decode step), so switching adapters between the
steps of interleaved sequences is safe: each step runs with its own sequence's
adapter, or with none for the base model.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agoranet.engines.lora_rows import GatheredLora, gatherable
from agoranet.errors import AdapterError, InvalidRequestError, ModelNotFoundError
from agoranet.tuning.adapter import Adapter, read_adapter, unpack_adapter

logger = logging.getLogger(__name__)

__all__ = ["AdapterHost", "AdapterPool", "PooledAdapters"]


@runtime_checkable
class AdapterHost(Protocol):
    """An engine that serves LoRA adapters over its base model."""

    def add_adapter(self, archive: bytes, max_bytes: int) -> Adapter:
        """Check and store an uploaded adapter archive."""
        ...

    def list_adapters(self) -> list[Adapter]:
        """Adapters this engine can serve."""
        ...

    def accepts_adapters(self) -> bool:
        """Whether uploads are taken (an adapter store is configured)."""
        ...


class PooledAdapters:
    """The :class:`AdapterHost` methods of an engine whose adapters are kept in
    ``self.adapters`` (None: the engine takes no uploads)."""

    adapters: AdapterPool | None

    def add_adapter(self, archive: bytes, max_bytes: int) -> Adapter:
        """Store an uploaded adapter (the node's ``POST /v1/adapters``)."""
        if self.adapters is None:
            raise InvalidRequestError("this node does not accept adapters")
        return self.adapters.add(archive, max_bytes)

    def accepts_adapters(self) -> bool:
        return self.adapters is not None

    def list_adapters(self) -> list[Adapter]:
        return self.adapters.known() if self.adapters is not None else []


class AdapterPool:
    """The adapters a node knows (on disk) and the few it holds in memory."""

    def __init__(self, model: Any, base_sha256: str | None, store: Path, capacity: int) -> None:
        self.model = model
        self.base_sha256 = base_sha256
        self.store = store
        self.capacity = max(1, capacity)
        self._peft: Any = None
        self._layers: list[Any] = []  # peft's LoRA layers, for the fast switch
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._current: str | None = None
        self._mixed = False  # the layers are set for a mixed batch (see rows)
        self._gathered = GatheredLora()
        self._known: dict[str, Adapter] = {}
        self._lock = threading.Lock()
        self.counters = {"loads": 0, "evictions": 0, "switches": 0}
        store.mkdir(parents=True, exist_ok=True)
        for directory in sorted(p for p in store.iterdir() if p.is_dir()):
            if directory.name.startswith("."):
                continue
            try:  # one stale or damaged adapter never keeps the node from starting
                self._remember(read_adapter(directory))
            except AdapterError as exc:
                logger.warning("not serving the stored adapter %s: %s", directory.name[:12], exc)

    # ------------------------------------------------------------- catalogue

    def _remember(self, adapter: Adapter) -> Adapter:
        if self.base_sha256 and adapter.manifest.base_model_sha256 != self.base_sha256:
            raise AdapterError(
                f"adapter {adapter.id[:12]} was trained on base weights "
                f"{str(adapter.manifest.base_model_sha256)[:12]}, this node serves "
                f"{self.base_sha256[:12]}"
            )
        with self._lock:
            self._known[adapter.id] = adapter
        return adapter

    def add(self, archive: bytes, max_bytes: int) -> Adapter:
        """Store an uploaded adapter after checking its id and base weights."""
        adapter = unpack_adapter(archive, self.store, max_bytes)
        try:
            return self._remember(adapter)
        except AdapterError:
            shutil.rmtree(adapter.path)
            raise

    def get(self, ident: str) -> Adapter:
        with self._lock:
            adapter = self._known.get(ident)
        if adapter is None:
            raise ModelNotFoundError(
                f"adapter {ident} is not on this node; upload it with POST /v1/adapters",
                param="model",
            )
        return adapter

    def known(self) -> list[Adapter]:
        with self._lock:
            return list(self._known.values())

    def loaded(self) -> list[str]:
        return list(self._loaded)

    # ------------------------------------------------ worker thread only

    def activate(self, ident: str | None) -> None:
        """Make ``ident`` (or the bare base model) the one the next forward pass uses.

        peft's own ``set_adapter`` also re-flags ``requires_grad`` on every adapter
        of every layer, which costs more the more adapters are loaded; for
        inference only the active name and the disabled flag matter, so they are
        set directly on the LoRA layers collected after each load.
        """
        if ident == self._current and not self._mixed and (ident is None or ident in self._loaded):
            return
        self._mixed = False
        self.counters["switches"] += 1
        if ident is not None and ident not in self._loaded:
            self._load(ident)
        if ident is not None:
            self._loaded.move_to_end(ident)
        for layer in self._layers:
            if ident is None:
                layer._disable_adapters = True
            else:
                layer._active_adapter = ident
                layer._disable_adapters = False
        self._current = ident

    @contextlib.contextmanager
    def rows(self, idents: Sequence[str | None]) -> Iterator[None]:
        """Within it, a forward pass runs batch row ``i`` with adapter ``idents[i]`` (None:
        the base model alone), all in one pass (gathered LoRA products, see
        :mod:`agoranet.engines.lora_rows`, else peft's mixed-adapter batches). At most
        ``capacity`` distinct adapters, so that none is evicted before it runs."""
        wanted = list(dict.fromkeys(ident for ident in idents if ident is not None))
        if len(wanted) > self.capacity:
            raise AdapterError(f"{len(wanted)} adapters in one batch, {self.capacity} fit")
        for ident in wanted:
            if ident not in self._loaded:
                self._load(ident)
            self._loaded.move_to_end(ident)
        self._mixed = True  # the next activate() sets every layer again
        if gatherable(self._layers):  # a gathered product per layer, any number of adapters
            with self._gathered.rows(self._layers, sorted(self._loaded), idents):
                yield
            return
        names = [ident if ident is not None else "__base__" for ident in idents]
        hook = partial(_with_adapter_names, names=names)
        handles = [layer.register_forward_pre_hook(hook, with_kwargs=True)
                   for layer in self._layers]
        for layer in self._layers:
            layer._disable_adapters = False
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _load(self, ident: str) -> None:
        from peft import PeftModel

        path = str(self.get(ident).path)
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=ident)
        else:
            self._peft.load_adapter(path, adapter_name=ident)
        self._peft.eval()
        self._collect_layers()
        self._loaded[ident] = None
        self.counters["loads"] += 1
        while len(self._loaded) > self.capacity:
            victim = next(iter(self._loaded))
            if victim == ident:
                break
            del self._loaded[victim]
            self._peft.set_adapter(ident)
            self._peft.delete_adapter(victim)
            self.counters["evictions"] += 1
        self._current = None  # force the next activate() to set every layer

    def _collect_layers(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        for layer in layers:
            if not hasattr(layer, "_active_adapter") or not hasattr(layer, "_disable_adapters"):
                raise AdapterError("this peft version lays out LoRA layers differently")
        self._layers = layers


def _with_adapter_names(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                        names: list[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A LoRA layer's forward pre-hook: the adapter of each batch row."""
    kwargs["adapter_names"] = names
    return args, kwargs
