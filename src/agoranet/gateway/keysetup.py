"""A keyed gateway's start: open the key store, settle what a dead gateway left, the
owner key.

Reservations of a gateway whose process is gone are settled at their full amounts
(:meth:`KeyStore.recover`); each becomes a spend-log row with outcome ``lost`` and is
counted in the global budget, so a restart forgets no money in flight -- unless its
request's answer is in the spend log already (an ``ok`` row: the gateway died after
logging it, before the key store's settlement reached the disk), whose rows hold what it
cost and are counted in the budget once. The owner key
(the tree's root, no cap of its own: the global budget applies) is created on the
first start and written, mode 0600, to ``settings.owner_key_path()``; if that file is
gone, a new secret is issued for it. Its secret is never printed: only its path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from agoranet.config import GatewaySettings
from agoranet.gateway.budget import Budget
from agoranet.gateway.keystore import OWNER, KeyStore
from agoranet.gateway.spendlog import SpendLog, SpendRow

__all__ = ["KeyedStart", "ensure_owner", "job_owner_salt", "start_keys", "write_secret"]


@dataclass(frozen=True)
class KeyedStart:
    store: KeyStore
    owner_key: Path
    owner_created: bool
    lost: int  # base units settled for reservations a dead gateway left


def write_secret(path: Path, secret: str) -> None:
    """``secret`` into ``path``, readable by its owner only, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    temporary.replace(path)


def job_owner_salt(path: Path) -> bytes:
    """This gateway's secret salt for the owner tokens it shows nodes (fine-tuning jobs):
    read from ``path``, or made and written there (0600) on first use. It outlives key
    rotations, so a key keeps its jobs when its secret changes."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        salt = bytes.fromhex(path.read_text().strip())
        if len(salt) == 32:
            return salt
    salt = secrets.token_bytes(32)
    fresh = path.with_name(f".{path.name}.new.{os.getpid()}")
    write_secret(fresh, salt.hex())
    try:  # the first gateway to start wins; a second one reads its salt
        os.link(fresh, path)
    except FileExistsError:
        salt = bytes.fromhex(path.read_text().strip())
    finally:
        fresh.unlink(missing_ok=True)
    return salt


def start_keys(settings: GatewaySettings, spend: SpendLog, budget: Budget) -> KeyedStart:
    """The key store of a keyed gateway, ready to serve (see the module's docstring)."""
    store = KeyStore(settings.key_store_path())
    lost = 0
    for reservation in store.recover():
        if spend.answered(reservation.request_id):
            continue  # logged whole before the gateway died: not spent twice in the log
        spend.add(SpendRow(reservation.request_id, reservation.model, "-", 0, 0,
                           reservation.amount, None, 0.0, "lost", key=reservation.key))
        lost += reservation.amount
    budget.spent += lost
    path = settings.owner_key_path()
    return KeyedStart(store, path, ensure_owner(store, path), lost)


def ensure_owner(store: KeyStore, path: Path) -> bool:
    """The owner key exists and its secret is in ``path``; whether it was (re)issued."""
    if store.find(OWNER) is None:
        write_secret(path, store.create(OWNER, parent=None, budget=None).secret)
        return True
    if not path.exists():
        write_secret(path, store.reissue(OWNER))
        return True
    return False
