"""A share of the fuzz run (``bench/fuzz.py`` runs 10,000 inputs) in the default suite.

Real processes: a dev chain, a paid node serving the tiny model, a gateway in front
of a fake node that answers garbage. After some 400 generated inputs (schema-driven
requests, broken bodies, mutated x402 payments, query strings, node garbage) both
processes are alive, nothing answered 500 (nor anything else >= 500 for client
input), and nothing was charged for a refused input, in the ledger or on chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agoranet.chain.devchain import find_anvil
from agoranet.errors import DevChainError

from .harness import TARGETS, Fuzzer, Live, live_network

try:
    find_anvil()
    NO_ANVIL = ""
except DevChainError as exc:
    NO_ANVIL = str(exc)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(NO_ANVIL), reason=NO_ANVIL or "-")]

INPUTS = 400


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Live]:
    with live_network(tmp_path_factory.mktemp("fuzz"), tiny_model) as network:
        yield network


@pytest.mark.timeout(600)
def test_fuzzed_inputs_get_no_500_and_charge_nothing_refused(live: Live) -> None:
    fuzzer = Fuzzer(live)
    try:
        verdict = fuzzer.run({t: max(1, round(INPUTS * share)) for t, share in TARGETS.items()})
    finally:
        fuzzer.close()
    assert verdict.inputs >= INPUTS * 0.95, verdict.counts
    report = "\n".join(f"{f.target}: {f.what}\n    input: {f.given}"
                       for f in verdict.failures[:10])
    assert not verdict.failures, f"{len(verdict.failures)} failures:\n{report}"
    assert not verdict.checks, verdict.checks
    # every target reached deeper than its first check
    assert verdict.counts["node-bodies"]["2xx"] > 0, verdict.counts
    assert verdict.counts["node-payments"]["402"] > 0, verdict.counts
    assert verdict.counts["node-garbage"]["upstream 502/503"] > 0, verdict.counts
