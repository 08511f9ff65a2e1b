"""Find the tools to serve from ``MODULE:OBJECT`` (as uvicorn finds an app)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from agoranet.errors import ConfigError
from agoranet.tools.server import ToolServer

__all__ = ["load_tool_server"]


def load_tool_server(target: str) -> ToolServer:
    """The :class:`ToolServer` at ``MODULE:OBJECT`` (an instance, or a function of no
    arguments that returns one); the current directory is importable."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{target!r}: write MODULE:OBJECT, e.g. mytools:tools")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name}: {exc}") from exc
    found: object = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{module_name} has no {attribute}")
        found = getattr(found, part)
    if callable(found) and not isinstance(found, ToolServer):
        found = found()
    if not isinstance(found, ToolServer):
        raise ConfigError(f"{target} is a {type(found).__name__}, not an "
                          "agoranet.tools.ToolServer")
    return found
