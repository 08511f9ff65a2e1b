"""A chain-free gateway that needs its keys, over given nodes: for tests of keys and clients."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agoranet.node.launcher import running_command

__all__ = ["KeyedGateway", "keyed_gateway"]


@dataclass(frozen=True)
class KeyedGateway:
    url: str  # .../v1
    home: Path  # its spend log, key store and owner key

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    @property
    def key_store(self) -> Path:
        return self.home / "keys.sqlite"

    @property
    def owner(self) -> str:
        return (self.home / "owner.key").read_text().strip()

    def call(self, method: str, path: str, key: str | None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, self.root + path, headers=headers, timeout=30, **kw)

    def mint(self, key: str, name: str, budget: int) -> str:
        made = self.call("POST", "/agoranet/keys", key, json={"name": name, "budget": budget})
        assert made.status_code == 201, made.text
        return str(made.json()["key"])

    def key(self, name: str) -> dict[str, Any]:
        shown = self.call("GET", f"/agoranet/keys/{name}", self.owner)
        assert shown.status_code == 200, shown.text
        return dict(shown.json())


@contextmanager
def keyed_gateway(home: Path, *nodes: str) -> Iterator[KeyedGateway]:
    """``agoranet gateway`` (no ``--open``, no chain) over ``nodes``, once it has their offers."""
    args = ["gateway", "--spend-log", str(home / "spend.sqlite")]
    for node in nodes:
        args += ["--node", node]
    with running_command(args, timeout=120) as url:
        deadline = time.monotonic() + 30
        while True:
            rows = httpx.get(url.removesuffix("/v1") + "/agoranet/nodes", timeout=5).json()
            if all(any(r["url"] == n and r["models"] for r in rows["nodes"]) for n in nodes):
                break
            assert time.monotonic() < deadline, "the gateway never read the nodes' offers"
            time.sleep(0.1)
        yield KeyedGateway(url, home)
