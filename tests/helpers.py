"""Shared helpers for tests: the tiny model, node subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from agoranet.node.launcher import free_port, running_node

__all__ = ["ROOT", "TINY_DIR", "ensure_tiny_model", "free_port", "node_process"]

ROOT = Path(__file__).resolve().parents[1]
TINY_DIR = Path(os.environ.get("AGORANET_TINY_MODEL", ROOT / "models" / "tiny"))
node_process = running_node


def ensure_tiny_model() -> Path:
    """The embedded tiny model, built once (under a lock: xdist workers share it)."""
    TINY_DIR.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(TINY_DIR) + ".lock"):
        if not (TINY_DIR / "model.safetensors").exists():
            from agoranet.tinymodel import build_tiny_model

            build_tiny_model(TINY_DIR)
    return TINY_DIR
