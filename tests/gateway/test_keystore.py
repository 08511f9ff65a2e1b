"""Gateway keys (unit): the tree, budgets along the chain, revocation, expiry, recovery."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agoranet.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from agoranet.gateway.budget import Budget
from agoranet.gateway.keyaccess import KeyAccess, check_key_policy
from agoranet.gateway.keysetup import ensure_owner, start_keys
from agoranet.gateway.keystore import OWNER, KeyQuotaError, KeyStore
from agoranet.gateway.policy import Policy
from agoranet.gateway.spendlog import SpendLog, SpendRow


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    keys = KeyStore(tmp_path / "keys.sqlite")
    ensure_owner(keys, tmp_path / "owner.key")
    return keys


def test_secrets_are_random_hashed_and_never_stored(store: KeyStore, tmp_path: Path) -> None:
    made = [store.create(f"agent{i}", parent=OWNER, budget=10) for i in range(3)]
    assert all(m.secret.startswith("agn-") and len(m.secret) >= 4 + 43 for m in made)
    assert len({m.secret for m in made}) == 3
    assert store.authenticate(made[1].secret)[0].name == "agent1"
    assert "secret" not in repr(made[0]) and made[0].secret not in repr(made[0])
    store.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("keys.sqlite*"))
    assert not any(m.secret.encode() in stored for m in made)
    owner = (tmp_path / "owner.key").read_text().strip()
    assert owner.encode() not in stored
    assert (tmp_path / "owner.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("secret", [None, "", "agn-wrong", "sk-whatever"])
def test_no_or_a_wrong_key_is_refused_without_echoing_it(store: KeyStore,
                                                         secret: str | None) -> None:
    with pytest.raises(AuthenticationError) as caught:
        store.authenticate(secret)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    if secret:
        assert secret not in caught.value.message


def test_a_reservation_holds_along_the_whole_chain(store: KeyStore) -> None:
    store.create("team", parent=OWNER, budget=100)
    child = store.create("agent", parent="team", budget=60).record
    sibling = store.create("other", parent="team", budget=60).record
    first = store.reserve(child.id, 50, "r1", "tiny")
    with pytest.raises(KeyQuotaError, match="key 'agent' has 10 base units left") as caught:
        store.reserve(child.id, 11, "r2", "tiny")
    assert caught.value.status_code == 429 and caught.value.code == "insufficient_quota"
    with pytest.raises(KeyQuotaError, match=r"key 'team' .*an ancestor of 'other'.* 50 "):
        store.reserve(sibling.id, 51, "r3", "tiny")
    store.settle(first, 30)
    store.settle(first, 30)  # a second settle changes nothing
    team, agent = store.get("team"), store.get("agent")
    assert (team.spent, team.reserved, agent.spent, agent.reserved) == (30, 0, 30, 0)
    assert store.get(OWNER).spent == 30 and store.get(OWNER).remaining is None
    assert agent.day_spent == 30


def test_a_child_gets_at_most_what_its_parent_has_left(store: KeyStore) -> None:
    team = store.create("team", parent=OWNER, budget=100, per_day=80,
                        expires=time.time() + 3600).record
    store.settle(store.reserve(team.id, 70, "r", "tiny"), 70)
    with pytest.raises(InvalidRequestError, match="has 30 base units left"):
        store.create("greedy", parent="team", budget=31, per_day=10)
    with pytest.raises(InvalidRequestError, match="80 base units a day"):
        store.create("daily", parent="team", budget=5, per_day=81)
    with pytest.raises(InvalidRequestError, match="outlive"):
        store.create("late", parent="team", budget=5, expires=time.time() + 7200)
    assert store.create("inherits", parent="team", budget=1).record.expires == team.expires
    store.create("fine", parent="team", budget=30, per_day=5, expires=time.time() + 60)
    with pytest.raises(InvalidRequestError, match="has 30 base units left"):
        store.top_up("fine", 1, within="team")
    with pytest.raises(PermissionDeniedError):
        store.create("sneaky", parent="team", budget=1, within="fine")
    with pytest.raises(InvalidRequestError, match="exists"):
        store.create("fine", parent=OWNER, budget=1)


def test_a_daily_cap_holds(store: KeyStore) -> None:
    key = store.create("daily", parent=OWNER, budget=100, per_day=10).record
    store.settle(store.reserve(key.id, 8, "r", "tiny"), 8)
    with pytest.raises(KeyQuotaError, match="2 base units left today"):
        store.reserve(key.id, 3, "r", "tiny")


def test_revoking_stops_the_subtree_and_expiry_too(store: KeyStore) -> None:
    store.create("team", parent=OWNER, budget=100)
    child = store.create("agent", parent="team", budget=10)
    grandchild = store.create("helper", parent="agent", budget=5)
    assert store.revoke("agent", within="team") == ["agent", "helper"]
    for secret in (child.secret, grandchild.secret):
        with pytest.raises(AuthenticationError, match="revoked"):
            store.authenticate(secret)
    with pytest.raises(PermissionDeniedError):
        store.revoke("team", within="agent")
    soon = store.create("brief", parent=OWNER, budget=1, expires=time.time() + 60)
    below = store.create("below", parent="brief", budget=1)
    assert below.record.expires == soon.record.expires  # inherited
    store.authenticate(below.secret)
    later = time.time() + 120
    with pytest.raises(AuthenticationError, match="expired"):
        store.authenticate(soon.secret, now=later)
    with pytest.raises(AuthenticationError, match="this key is expired"):
        store.authenticate(below.secret, now=later)
    # the chain is checked too, not only the key's own expiry
    store._db.execute("UPDATE keys SET expires = NULL WHERE name = 'below'")
    with pytest.raises(AuthenticationError, match="ancestor key 'brief' is expired"):
        store.authenticate(below.secret, now=later)


def test_concurrent_reservations_from_processes_never_overspend(tmp_path: Path) -> None:
    """Threads with their own connections stand in for processes: one file, 40 takers."""
    path = tmp_path / "keys.sqlite"
    setup = KeyStore(path)
    ensure_owner(setup, tmp_path / "owner.key")
    key = setup.create("agent", parent=OWNER, budget=25).record
    won: list[int] = []

    def take() -> None:
        mine = KeyStore(path)
        for _ in range(4):
            with contextlib.suppress(KeyQuotaError):
                won.append(mine.reserve(key.id, 1, "r", "tiny"))
        mine.close()

    threads = [threading.Thread(target=take) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 25 and setup.get("agent").reserved == 25 == setup.in_flight()


def test_a_dead_gateways_reservations_are_settled_in_full(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    dead, key, died = _dead_gateways_store(tmp_path)
    held = dead.reserve(key.id, 40, "chatcmpl-lost", "tiny")
    dead.settle(dead.reserve(key.id, 5, "chatcmpl-done", "tiny"), 3)
    died(held)
    alive = KeyStore(path)  # another gateway, alive, shares the file: its holds stay
    alive.reserve(key.id, 7, "chatcmpl-alive", "tiny")
    spend = SpendLog(tmp_path / "spend.sqlite")
    budget = Budget(1000, spent=spend.total())
    started = start_keys(_settings(tmp_path), spend, budget)
    assert started.lost == 40 and budget.spent == 40
    [row] = spend.rows()
    assert (row.outcome, row.amount, row.key, row.request_id) == ("lost", 40, "agent",
                                                                  "chatcmpl-lost")
    agent = started.store.get("agent")
    assert (agent.spent, agent.reserved) == (43, 7)
    assert start_keys(_settings(tmp_path), spend, budget).lost == 0  # settled once


def test_a_dead_gateways_answered_request_is_not_logged_twice(tmp_path: Path) -> None:
    """The gateway logged an answer, then died before the key store's settlement reached the
    disk: the key is settled in full, and the spend log keeps the one row it has."""
    dead, key, died = _dead_gateways_store(tmp_path)
    for held in (dead.reserve(key.id, 4, "chatcmpl-answered", "tiny"),
                 dead.reserve(key.id, 6, "chatcmpl-cut", "tiny")):
        died(held)
    spend = SpendLog(tmp_path / "spend.sqlite")
    spend.add(SpendRow("chatcmpl-answered", "tiny", "http://node", 3, 1, 4, 1.0, 2.0, "ok",
                       key="agent"))
    spend.add(SpendRow("chatcmpl-cut", "tiny", "http://node", 3, 1, 2, 1.0, 2.0, "partial",
                       key="agent"))
    budget = Budget(1000, spent=spend.total())
    started = start_keys(_settings(tmp_path), spend, budget)
    assert started.lost == 6 and budget.spent == 4 + 2 + 6 == spend.total()
    assert [(r.request_id, r.outcome, r.amount) for r in spend.rows()] == [
        ("chatcmpl-answered", "ok", 4), ("chatcmpl-cut", "partial", 2),
        ("chatcmpl-cut", "lost", 6)]
    assert started.store.get("agent").spent == 10  # both settled in full: never less


def _dead_gateways_store(tmp_path: Path) -> tuple[KeyStore, Any, Callable[[int], None]]:
    """A key store (``keys.sqlite``) with key "agent" (budget 100), and ``died(id)``, which
    makes reservation ``id`` one held by a gateway process that has exited."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store = KeyStore(tmp_path / "keys.sqlite")
    ensure_owner(store, tmp_path / "owner.key")
    key = store.create("agent", parent=OWNER, budget=100).record

    def died(held: int) -> None:
        store._db.execute("UPDATE reservations SET pid = ? WHERE id = ?", (gone.pid, held))

    return store, key, died


def _settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    from agoranet.config import GatewaySettings

    return GatewaySettings(spend_log=tmp_path / "spend.sqlite")


def test_models_and_policy_of_the_whole_chain_apply(store: KeyStore) -> None:
    store.create("team", parent=OWNER, budget=100, models=["tiny*"],
                 policy=check_key_policy({"max_price_out": 300, "deny": ["http://a/v1"]}))
    store.create("agent", parent="team", budget=10, models=["*"],
                 policy=check_key_policy({"max_price_out": 900, "prefer": "cheapest"}))
    access = KeyAccess(store, store.authenticate(store.reissue("agent")))
    assert access.allows_model("tiny-chat") and not access.allows_model("big")
    with pytest.raises(PermissionDeniedError, match="may not use the model 'big'"):
        access.check_model("big")
    policy = access.narrow(Policy(max_price_out=500))
    assert (policy.max_price_out, policy.deny, policy.prefer) == (300, ["http://a/v1"],
                                                                   "cheapest")
    with pytest.raises(InvalidRequestError, match="cannot set max_attempts"):
        check_key_policy({"max_attempts": 2})


async def test_a_keyed_reservation_releases_key_and_global_budget_once(store: KeyStore) -> None:
    key = store.create("agent", parent=OWNER, budget=10).record
    budget = Budget(5)
    access = KeyAccess(store, store.chain(key.id))
    keyed = access.budget(budget, "r", "tiny")
    held = await keyed.reserve(4)
    assert budget.reserved == 4 and store.get("agent").reserved == 4
    with pytest.raises(Exception, match="budget has 1 left"):  # the global budget refuses
        await keyed.reserve(2)
    assert store.get("agent").reserved == 4  # and the key's hold was given back
    held.release(3)
    held.release(3)
    assert (budget.spent, budget.reserved) == (3, 0)
    agent = store.get("agent")
    assert (agent.spent, agent.reserved) == (3, 0)
