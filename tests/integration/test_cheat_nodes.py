"""Cheating node processes claim the honest weights, and `audit_node` catches them over HTTP."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.verify.node_audit import audit_node
from helpers import rigged_node_process

pytestmark = pytest.mark.slow

COMMON = ["--free", "--no-fine-tuning", "--no-adapters"]


def test_a_smaller_model_under_the_honest_hash_fails(tiny_model: Path, small_model: Path,
                                                     tiny_loaded: Any) -> None:
    with rigged_node_process(["--model", str(tiny_model), "--cheat", f"smaller:{small_model}",
                               *COMMON]) as url:
        offer = httpx.get(url.removesuffix("/v1") + "/.well-known/agoranet").json()
        audit = audit_node(url, "tiny", tiny_loaded)
    assert offer["models"][0]["model_sha256"] == tiny_loaded.info.model_sha256
    assert not audit.passed and audit.flagged >= 5, [r.flagged for r in audit.results]


def test_a_replaying_node_fails_fresh_audits(tiny_model: Path, tiny_loaded: Any) -> None:
    with rigged_node_process(["--model", str(tiny_model), "--cheat", "replay",
                               *COMMON]) as url:
        first = audit_node(url, "tiny", tiny_loaded, rng=random.Random(1))
        again = audit_node(url, "tiny", tiny_loaded, rng=random.Random(1))  # the same challenges
        fresh = audit_node(url, "tiny", tiny_loaded, rng=random.Random(2))
    print(f"\nreplay over HTTP, answers flagged: first audit {first.flagged}, the same audit "
          f"again {again.flagged}, a fresh one {fresh.flagged}, of {len(fresh.results)} each")
    assert [r.mismatches for r in again.results] == [r.mismatches for r in first.results]
    assert not fresh.passed
