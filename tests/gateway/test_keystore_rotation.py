"""Rotating a gateway key (unit): a new secret, the same key; the old secret's grace period."""

from __future__ import annotations

from pathlib import Path

import pytest

from agoranet.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from agoranet.gateway.keysetup import ensure_owner
from agoranet.gateway.keystore import MAX_GRACE_S, OWNER, KeyStore


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    keys = KeyStore(tmp_path / "keys.sqlite")
    ensure_owner(keys, tmp_path / "owner.key")
    return keys


def test_a_rotated_key_keeps_its_budget_spend_children_and_holds(store: KeyStore) -> None:
    old = store.create("agent", parent=OWNER, budget=100, per_day=50)
    child = store.create("helper", parent="agent", budget=20)
    store.settle(store.reserve(old.record.id, 10, "r1", "tiny"), 7)
    held = store.reserve(old.record.id, 5, "r2", "tiny")  # in flight across the rotation
    new = store.rotate("agent")
    assert new.secret != old.secret and new.secret.startswith("agn-")
    with pytest.raises(AuthenticationError, match="not valid"):
        store.authenticate(old.secret)
    agent = store.authenticate(new.secret)[0]
    assert (agent.id, agent.budget, agent.per_day, agent.spent, agent.reserved) == (
        old.record.id, 100, 50, 7, 5)
    assert new.record == store.get("agent")
    assert store.authenticate(child.secret)[0].parent == "agent"  # children untouched
    store.settle(held, 4)
    assert (store.get("agent").spent, store.get("agent").reserved) == (11, 0)
    assert store.get(OWNER).spent == 11


def test_the_old_secret_works_only_for_its_grace_period(store: KeyStore) -> None:
    first = store.create("agent", parent=OWNER, budget=100).secret
    second = store.rotate("agent", grace_s=60, now=1000.0).secret
    assert store.authenticate(first, now=1059.0)[0].name == "agent"
    assert store.authenticate(second, now=1059.0)[0].name == "agent"
    with pytest.raises(AuthenticationError, match="not valid"):
        store.authenticate(first, now=1060.0)
    third = store.rotate("agent", grace_s=600, now=1010.0).secret
    # Each old secret keeps its own deadline: a later rotation does not extend the first.
    for secret, works_until in ((first, 1060.0), (second, 1610.0)):
        assert store.authenticate(secret, now=works_until - 1)[0].name == "agent"
        with pytest.raises(AuthenticationError):
            store.authenticate(secret, now=works_until)
    # A rotation without grace (a leaked key) ends every grace still running.
    fourth = store.rotate("agent", now=1020.0).secret
    for secret in (first, second, third):
        with pytest.raises(AuthenticationError, match="not valid"):
            store.authenticate(secret, now=1021.0)
    assert store.authenticate(fourth, now=1021.0)[0].name == "agent"


def test_a_secret_in_its_grace_period_still_obeys_revocation(store: KeyStore) -> None:
    store.create("team", parent=OWNER, budget=100)
    old = store.create("agent", parent="team", budget=10).secret
    store.rotate("agent", grace_s=3600)
    store.revoke("team")
    with pytest.raises(AuthenticationError, match="'agent' is not usable: this key is revoked"):
        store.authenticate(old)


def test_rotation_stays_within_the_callers_subtree(store: KeyStore) -> None:
    store.create("team", parent=OWNER, budget=100)
    store.create("agent", parent="team", budget=10)
    store.create("other", parent=OWNER, budget=10)
    assert store.rotate("agent", within="team").record.name == "agent"
    assert store.rotate("team", within="team").record.name == "team"  # its own key
    with pytest.raises(PermissionDeniedError, match="not 'agent' or one of its descendants"):
        store.rotate("team", within="agent")
    with pytest.raises(PermissionDeniedError):
        store.rotate("other", within="team")
    with pytest.raises(InvalidRequestError, match="no key named"):
        store.rotate("nobody")
    for grace in (-1.0, MAX_GRACE_S + 1.0):
        with pytest.raises(InvalidRequestError, match="grace period"):
            store.rotate("agent", grace_s=grace)


def test_a_store_from_before_rotation_gains_the_table(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    old = KeyStore(path)
    secret = old.create("agent", parent=None, budget=10).secret
    old._db.execute("DROP TABLE retired_secrets")  # as a store made before rotation existed
    old.close()
    reopened = KeyStore(path)
    assert reopened.authenticate(secret)[0].name == "agent"
    new = reopened.rotate("agent", grace_s=60).secret
    assert reopened.authenticate(secret)[0].name == reopened.authenticate(new)[0].name
