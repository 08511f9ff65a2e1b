"""Typed settings, read from the environment with the ``AGORANET_`` prefix.

Command-line options override them; every component receives a settings object
instead of reading the environment itself.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["NodeSettings", "default_home"]


def default_home() -> Path:
    """Where agoranet keeps its state unless told otherwise (``AGORANET_HOME``)."""
    return Path.home() / ".agoranet"


class NodeSettings(BaseSettings):
    """Settings of one node: what it serves, at what price, under which limits."""

    model_config = SettingsConfigDict(env_prefix="AGORANET_NODE_", extra="ignore")

    engine: str = "transformers"
    model: str | None = Field(default=None, description="model directory, Hub id or GGUF path")
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    upstream_url: str | None = None
    upstream_api_key: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    # Prices in the stablecoin's base units per million tokens.
    price_in: int = Field(default=0, ge=0)
    price_out: int = Field(default=0, ge=0)
    # Concurrency: sequences generated at once, and how many more may wait.
    max_active: int = Field(default=8, ge=1)
    max_queue: int = Field(default=64, ge=0)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
