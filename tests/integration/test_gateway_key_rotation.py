"""Rotating gateway keys with real processes: a node, a keyed gateway, the CLI beside them.

The node charges only output (250_000 per million tokens) and each request asks for at
most 4 tokens, so every request's worst case and actual cost are exactly 1 base unit.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import node_process
from keyed import KeyedGateway, keyed_gateway

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me about the library."}]


@pytest.fixture(scope="module")
def gateway(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedGateway]:
    with node_process(["--model", str(tiny_model), "--price-in", "0", "--price-out", "250000",
                       "--free", "--no-fine-tuning", "--no-adapters"]) as node, \
            keyed_gateway(tmp_path_factory.mktemp("gateway"), node) as keyed:
        yield keyed


def ask(gateway: KeyedGateway, key: str) -> int:
    reply = gateway.call("POST", "/v1/chat/completions", key, json={
        "model": "tiny", "messages": QUESTION, "max_tokens": 4, "temperature": 0})
    if reply.status_code == 200:
        assert reply.json()["agoranet"]["amount"] == 1
    else:
        assert set(reply.json()["error"]) >= {"message", "type", "code"}, reply.text
    return reply.status_code


def cli_rotate(gateway: KeyedGateway, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "agoranet", "keys", "rotate", *args,
                           "--key-store", str(gateway.key_store)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_cli_rotation_keeps_the_key_and_stops_the_old_secret(gateway: KeyedGateway) -> None:
    old = gateway.mint(gateway.owner, "agent", 100)
    helper = gateway.mint(old, "helper", 10)
    assert [ask(gateway, old) for _ in range(2)] == [200, 200]
    assert ask(gateway, helper) == 200
    lines = cli_rotate(gateway, "agent")
    [new] = [line for line in lines if line.startswith("agn-")]
    assert "\n".join(lines).count(new) == 1 and old not in "\n".join(lines)
    assert ask(gateway, old) == 401  # at once, on the running gateway
    assert gateway.call("GET", "/agoranet/keys", old).status_code == 401
    assert ask(gateway, new) == 200
    assert ask(gateway, helper) == 200  # a child's own secret is not touched
    agent = gateway.key("agent")
    assert (agent["budget"], agent["spent"], agent["reserved"]) == (100, 5, 0)
    listed = gateway.call("GET", "/agoranet/keys", new).json()["data"]
    assert [k["name"] for k in listed] == ["agent", "helper"]
    assert gateway.key("helper")["spent"] == 2
    # Money: the owner spent exactly what its subtree spent, nothing is held.
    assert gateway.key("owner")["spent"] == 5 and gateway.key("owner")["reserved"] == 0


def test_http_rotation_within_the_subtree_with_a_grace_period(gateway: KeyedGateway) -> None:
    team = gateway.mint(gateway.owner, "team", 50)
    first = gateway.mint(team, "worker", 10)
    assert ask(gateway, first) == 200
    rotated = gateway.call("POST", "/agoranet/keys/worker/rotate", team, json={"grace_s": 3600})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["key"]
    assert rotated.json()["spent"] == 1 and rotated.json()["budget"] == 10
    assert ask(gateway, first) == 200 and ask(gateway, second) == 200  # both, in the grace
    # The worker cannot rotate its parent; nobody rotates the owner over HTTP.
    refused = gateway.call("POST", "/agoranet/keys/team/rotate", second)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    owner = gateway.call("POST", "/agoranet/keys/owner/rotate", gateway.owner)
    assert owner.status_code == 400 and "agoranet keys rotate owner" in owner.text
    bad = gateway.call("POST", "/agoranet/keys/worker/rotate", team, json={"grace": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "grace"
    # Rotating without grace ends the running one too: a leaked secret dies at once.
    third = gateway.call("POST", "/agoranet/keys/worker/rotate", second).json()["key"]
    assert (ask(gateway, first), ask(gateway, second), ask(gateway, third)) == (401, 401, 200)
    worker = gateway.key("worker")
    assert (worker["spent"], worker["reserved"]) == (4, 0)
    assert gateway.key("team")["spent"] == 4


def test_rotating_the_owner_rewrites_its_file(gateway: KeyedGateway) -> None:
    old = gateway.owner
    lines = cli_rotate(gateway, "owner")
    new = gateway.owner
    assert new != old and not any(new in line for line in lines)  # only in its file
    assert (gateway.home / "owner.key").stat().st_mode & 0o077 == 0
    assert gateway.call("GET", "/agoranet/keys", old).status_code == 401
    assert gateway.call("GET", "/agoranet/keys", new).status_code == 200
