"""Engines register themselves by name; the node creates one by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from agoranet.engines.base import Engine
from agoranet.errors import EngineNotFoundError

__all__ = ["available_engines", "create_engine", "register_engine"]

EngineFactory = Callable[..., Engine]
F = TypeVar("F", bound=EngineFactory)

_FACTORIES: dict[str, EngineFactory] = {}
# Built-in engines live in modules that import heavy extras; load them lazily.
_BUILTIN_MODULES = {
    "transformers": "agoranet.engines.hf",
    "upstream": "agoranet.engines.upstream",
    "llamacpp": "agoranet.engines.llamacpp",
    "vllm": "agoranet.engines.vllm",
}


def register_engine(name: str) -> Callable[[F], F]:
    """Class or function decorator: make an engine available under ``name``."""

    def decorate(factory: F) -> F:
        _FACTORIES[name] = factory
        return factory

    return decorate


def available_engines() -> list[str]:
    return sorted(set(_FACTORIES) | set(_BUILTIN_MODULES))


def create_engine(name: str, **options: Any) -> Engine:
    """Build the engine registered as ``name`` with engine-specific options."""
    if name not in _FACTORIES and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(available_engines())
        raise EngineNotFoundError(f"unknown engine {name!r}; known engines: {known}")
    return factory(**options)
