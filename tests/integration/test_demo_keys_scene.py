"""Issue #14's acceptance: the demo's agent scene, against a keyed gateway over a real node.

The butler (a key of the owner's) mints its scout a key over HTTP, the scout works
until the gateway answers 429 insufficient_quota, and the key table printed at the end
is ``agoranet keys list``'s, with amounts that add up.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from agoranet.cli.keys import table
from agoranet.demo.keys_step import BUTLER_BUDGET, SCOUT_ANSWERS, keys_step
from agoranet.gateway.keystore import KeyStore
from helpers import node_process
from keyed import KeyedGateway, keyed_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedGateway]:
    # Priced like the demo's cheapest node; --free: no chain needed to pay it.
    with node_process(["--model", str(tiny_model), "--price-in", "1000000", "--price-out",
                       "3000000", "--free", "--no-fine-tuning", "--no-adapters"]) as node, \
            keyed_gateway(tmp_path_factory.mktemp("gateway"), node) as keyed:
        yield keyed


def test_the_scout_works_until_its_cap_and_the_key_table_adds_up(gateway: KeyedGateway) -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    started = time.perf_counter()
    scene = keys_step(gateway.url, gateway.owner, gateway.key_store, console)
    text = out.getvalue()
    print(text, f"the scene took {time.perf_counter() - started:.1f} s")  # informative only
    # The scout was given about five answers' worth; it got some, then the cap refused it.
    assert 2 <= len(scene.costs) <= SCOUT_ANSWERS, scene
    assert all(cost > 0 for cost in scene.costs)
    assert re.search(r"key 'scout' has \d+ base units left of "
                     rf"{scene.scout_budget}; this request may cost up to \d+", scene.refusal)
    refused = f"scout #{len(scene.costs) + 1}:"
    assert refused in text and "429 insufficient_quota" in text.split(refused)[1]
    assert "butler mints its sub-agent scout a key of its own" in text
    # Money: the scout spent exactly its answers' costs, within its budget; the butler
    # spent its own answer plus the scout's; the owner what its only child spent; no holds.
    keys = {k["name"]: k for k in gateway.call("GET", "/agoranet/keys", gateway.owner)
            .json()["data"]}
    scout, butler, owner = keys["scout"], keys["butler"], keys["owner"]
    assert (scout["budget"], scout["spent"]) == (scene.scout_budget, sum(scene.costs))
    assert scout["spent"] <= scout["budget"]
    assert scout["parent"] == "butler" and butler["parent"] == "owner"
    assert butler["budget"] == BUTLER_BUDGET
    assert butler["spent"] == scout["spent"] + scene.scout_budget // SCOUT_ANSWERS
    assert owner["spent"] == butler["spent"]
    assert all(k["reserved"] == 0 for k in keys.values())
    # The table at the end is the CLI's, line for line.
    store = KeyStore(gateway.key_store)
    try:
        expected = table(store.subtree())
    finally:
        store.close()
    lines = text.splitlines()
    start = lines.index(expected[0])
    assert lines[start:start + len(expected)] == expected
    assert [line.split()[0] for line in expected[1:]] == ["owner", "butler", "scout"]
