"""Which ``agoranet node`` options each built-in engine uses, so that one an engine would
not use is refused instead of silently ignored.

The command passes every engine option to the engine it builds (each engine takes the
ones it knows); an option the user set away from its default for an engine that does not
use it would otherwise change nothing without a word (``--gpu-memory-utilization`` on
the transformers engine, ``--device`` on an upstream). Engines registered by plug-ins are
not checked: their options are their own.
"""

from __future__ import annotations

from typing import Final

from agoranet.config import NodeSettings
from agoranet.errors import ConfigError

__all__ = ["ENGINE_OPTIONS", "check_engine_options"]

_LOCAL: Final = frozenset({"transformers", "vllm"})  # engines that load weights themselves

# NodeSettings field -> (its flag, the built-in engines that use it).
ENGINE_OPTIONS: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "upstream_url": ("--upstream-url", frozenset({"upstream"})),
    "upstream_api_key": ("--upstream-api-key", frozenset({"upstream"})),
    "device": ("--device", _LOCAL),
    "dtype": ("AGORANET_NODE_DTYPE", _LOCAL),
    "max_active": ("--max-active", _LOCAL),
    "batching": ("--no-batching", frozenset({"transformers"})),
    "tool_call_parser": ("--tool-call-parser", _LOCAL),
    "embedding_pooling": ("--embedding-pooling", _LOCAL),
    "gpu_memory_utilization": ("--gpu-memory-utilization", frozenset({"vllm"})),
    "max_adapters": ("--max-adapters", _LOCAL),
}
_BUILT_IN: Final = frozenset({"transformers", "vllm", "llamacpp", "upstream"})


def check_engine_options(settings: NodeSettings) -> None:
    """Raise :class:`ConfigError` naming every option set away from its default that
    ``settings.engine`` (a built-in engine) does not use."""
    if settings.engine not in _BUILT_IN:
        return
    unused = [flag for field, (flag, engines) in ENGINE_OPTIONS.items()
              if settings.engine not in engines
              and getattr(settings, field) != NodeSettings.model_fields[field].default]
    if unused:
        raise ConfigError(f"the {settings.engine} engine does not use {', '.join(unused)}: "
                          "leave it out (see `agoranet node --help` for which engine takes "
                          "which option)")
