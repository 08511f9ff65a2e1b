"""Signed score lists: sign, verify, tampering, trust, and what an import does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from eth_account import Account

from agoranet.errors import ReputationListError
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.reputation import Reputation
from agoranet.gateway.scorelist import (
    ScoreList,
    build_list,
    check_list,
    list_signer,
    read_list,
    sign_list,
    verdicts,
)

ALICE = Account.from_key("0x" + "11" * 32)  # a buyer whose audits we trust
MALLORY = Account.from_key("0x" + "22" * 32)


def findings(tmp_path: Path) -> Reputation:
    """Alice's store: one honest node, one caught cheating."""
    store = Reputation(tmp_path / "alice.sqlite")
    honest, cheat = NodeState("http://honest/v1", reputation=store), NodeState(
        "http://cheat/v1", reputation=store)
    honest.record_success(10, 5, 0.1)
    honest.record_audit("tiny", passed=True, answers=10, flagged=0, tokens=480)
    cheat.record_audit("tiny", passed=False, answers=10, flagged=4, tokens=470)
    return store


def test_a_signed_list_verifies_and_says_what_was_found(tmp_path: Path) -> None:
    signed = sign_list(build_list(findings(tmp_path)), ALICE)
    assert list_signer(signed) == ALICE.address
    assert check_list(signed, [ALICE.address.lower()]) == ALICE.address
    entries = {e.node: e for e in signed.entries}
    assert entries["http://cheat/v1"].audits_failed == 1
    assert entries["http://cheat/v1"].banned_until > time.time()
    assert entries["http://honest/v1"].audits_passed == 1
    assert entries["http://honest/v1"].tokens_audited == 480
    assert entries["http://honest/v1"].banned_until == 0
    # The file round-trips through JSON with its signature intact.
    path = tmp_path / "alice.json"
    path.write_text(signed.model_dump_json(indent=2))
    assert list_signer(read_list(path)) == ALICE.address


@pytest.mark.parametrize("field", ["score", "audits_failed", "banned_until"])
def test_a_tampered_list_is_refused(tmp_path: Path, field: str) -> None:
    signed = sign_list(build_list(findings(tmp_path)), ALICE)
    data = json.loads(signed.model_dump_json())
    entry = next(e for e in data["entries"] if e["node"] == "http://cheat/v1")
    entry[field] = 0 if field != "score" else 0.99
    with pytest.raises(ReputationListError, match="altered after signing"):
        check_list(ScoreList.model_validate(data), [ALICE.address])


def test_a_list_claiming_another_signer_is_refused(tmp_path: Path) -> None:
    signed = sign_list(build_list(findings(tmp_path)), MALLORY)
    forged = signed.model_copy(update={"signer": ALICE.address})
    with pytest.raises(ReputationListError, match="does not match its signer"):
        check_list(forged, [ALICE.address])


def test_untrusted_and_unsigned_lists_are_refused(tmp_path: Path) -> None:
    unsigned = build_list(findings(tmp_path))
    with pytest.raises(ReputationListError, match="not signed"):
        check_list(unsigned, [ALICE.address])
    signed = sign_list(unsigned, MALLORY)
    with pytest.raises(ReputationListError, match="not a signer you trust"):
        check_list(signed, [ALICE.address])
    with pytest.raises(ReputationListError, match="opt-in"):
        check_list(signed, [])


def test_a_file_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"entries": [], "issued_at": 1, "extra": true}')
    with pytest.raises(ReputationListError, match="not a score list"):
        read_list(path)
    with pytest.raises(ReputationListError, match="cannot read"):
        read_list(tmp_path / "missing.json")


def test_importing_a_trusted_list_bans_what_it_caught(tmp_path: Path) -> None:
    signed = sign_list(build_list(findings(tmp_path)), ALICE)
    signer = check_list(signed, [ALICE.address])
    mine = Reputation(tmp_path / "bob.sqlite")  # another buyer's gateway
    cheat = NodeState("http://cheat/v1", reputation=mine)
    honest = NodeState("http://honest/v1", reputation=mine)
    assert not cheat.banned()
    mine.import_verdicts(signer, signed.issued_at, verdicts(signed, signer))
    assert cheat.banned() and not honest.banned()
    ban = cheat.lasting_ban()
    assert ban is not None and ALICE.address in ban.reason
    assert mine.record("http://cheat/v1").audits_failed == 0  # not counted as our own audit
    # An older list from the same signer cannot undo a newer one.
    with pytest.raises(ReputationListError, match="older"):
        mine.import_verdicts(signer, signed.issued_at - 1, [])
    # The import persists, and is seen by a store opened before it was written.
    other = Reputation(tmp_path / "bob.sqlite")
    assert NodeState("http://cheat/v1", reputation=other).banned()
    # A newer list from Alice without the ban lifts it.
    mine.import_verdicts(signer, signed.issued_at + 1, [])
    assert not cheat.banned()


def test_an_import_is_seen_by_a_running_gateways_store(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    signed = sign_list(build_list(findings(tmp_path)), ALICE)
    running = Reputation(tmp_path / "bob.sqlite")  # the gateway's connection
    cheat = NodeState("http://cheat/v1", reputation=running)
    assert not cheat.banned()
    cli = Reputation(tmp_path / "bob.sqlite")  # `agoranet reputation import`, meanwhile
    cli.import_verdicts(ALICE.address, signed.issued_at, verdicts(signed, ALICE.address))
    cli.close()
    monkeypatch.setattr(time, "time", lambda real=time.time: real() + 2)  # past the recheck
    assert cheat.banned()
