"""``agoranet mcp``: the MCP server over stdio, what desktop hosts (Claude Desktop, Cursor)
launch. Its tools call a running gateway (``agoranet gateway``) with one key.

The gateway is ``--gateway`` or ``http://<host>:<port>`` of the gateway's settings
(``AGORANET_GATEWAY_HOST`` / ``AGORANET_GATEWAY_PORT``, by default 127.0.0.1:8402). The
key is ``--key``, else ``AGORANET_KEY``, else ``OPENAI_API_KEY``, else the owner key the
gateway wrote under the agoranet home; none at all suits a gateway started with
``--open``. Nothing but MCP is ever written to stdout.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx

from agoranet.config import GatewaySettings
from agoranet.errors import ConfigError

if TYPE_CHECKING:
    from agoranet.agents.gateway_client import GatewayClient

__all__ = ["mcp", "resolve_key"]

_TIMEOUT = httpx.Timeout(600.0, connect=5.0)


def resolve_key(key: str | None, key_file: Path | None, settings: GatewaySettings) -> str | None:
    """The key to act as (see the module's docstring), or None."""
    if key:
        return key.strip()
    for name in ("AGORANET_KEY", "OPENAI_API_KEY"):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    path = key_file or settings.owner_key_path()
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if key_file is not None:
            raise ConfigError(f"--key-file {key_file}: no such file") from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc}") from exc


@click.command("mcp")
@click.option("--gateway", "gateway_url", default=None, metavar="URL",
              help="The gateway [default: http://127.0.0.1:8402, or the gateway's host and "
                   "port settings].")
@click.option("--key", default=None,
              help="The gateway key to act as [default: $AGORANET_KEY, $OPENAI_API_KEY, "
                   "else the owner key file].")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Read the key from this file [default: the gateway's owner.key].")
def mcp(gateway_url: str | None, key: str | None, key_file: Path | None) -> None:
    """An MCP server on stdin/stdout, for Claude Desktop, Cursor and other MCP hosts:
    ask, list_models, budget, create_subagent_key, fine_tune, fine_tune_status."""
    # The MCP SDK takes a second to import: only this command pays for it.
    from agoranet.agents.gateway_client import GatewayClient
    from agoranet.agents.mcp_server import build_mcp_server

    settings = GatewaySettings()
    url = (gateway_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--gateway {url}: give an http(s) URL")
    secret = resolve_key(key, key_file, settings)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    @asynccontextmanager
    async def clients(_: Any) -> AsyncIterator[GatewayClient]:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=_TIMEOUT) as http:
            yield GatewayClient(http)

    build_mcp_server(clients).run("stdio")
