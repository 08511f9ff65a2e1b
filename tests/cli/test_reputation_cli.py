"""``agoranet reputation``: show, export a signed list, import it elsewhere; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import Result, assert_one_line_error, run_inprocess
from rich.console import Console

from agoranet.gateway.nodes import NodeState
from agoranet.gateway.reputation import Reputation
from agoranet.gateway.scorelist import list_signer, read_list
from payments.support import PASSWORD, fast_keystore


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """AGORANET_HOME with a wallet and a gateway store that caught one cheat."""
    monkeypatch.setenv("AGORANET_HOME", str(tmp_path))
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    monkeypatch.setattr("agoranet.cli.reputation.console", Console(width=300))
    monkeypatch.delenv("AGORANET_WALLET_KEYSTORE", raising=False)
    monkeypatch.delenv("AGORANET_GATEWAY_REPUTATION_TRUST", raising=False)
    address = fast_keystore(tmp_path / "wallet" / "keystore.json")
    store = Reputation(tmp_path / "gateway" / "reputation.sqlite")  # the default place
    honest = NodeState("http://honest/v1", reputation=store)
    cheat = NodeState("http://cheat/v1", reputation=store)
    honest.record_success(10, 5, 0.1)
    honest.record_audit("tiny", passed=True, answers=10, flagged=0, tokens=480)
    cheat.record_audit("tiny", passed=False, answers=10, flagged=4, tokens=470)
    store.close()
    return tmp_path, address


def test_show_export_and_import(home: tuple[Path, str], capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    root, address = home
    shown = run_inprocess(capsys, monkeypatch, "reputation", "show", "--wide")
    assert shown.code == 0, shown.err
    assert "http://cheat/v1" in shown.out and "banned until" in shown.out
    assert "failed 1 audit" in shown.out and "1/0" in shown.out  # honest: 1 passed, 0 failed

    out = root / "shared" / "scores.json"
    exported = run_inprocess(capsys, monkeypatch, "reputation", "export", "--out", str(out))
    assert exported.code == 0, exported.err
    assert f"signed by {address}" in exported.out
    assert list_signer(read_list(out)) == address

    other = root / "other" / "reputation.sqlite"  # another buyer's gateway
    imported = run_inprocess(capsys, monkeypatch, "reputation", "import", str(out),
                             "--trust", address, "--reputation-log", str(other))
    assert imported.code == 0, imported.err
    assert "imported 2 node(s)" in imported.out and "banned here: http://cheat/v1" in imported.out
    store = Reputation(other)
    assert NodeState("http://cheat/v1", reputation=store).banned()
    assert not NodeState("http://honest/v1", reputation=store).banned()
    store.close()
    listed = run_inprocess(capsys, monkeypatch, "reputation", "show", "--reputation-log",
                           str(other))
    assert "imported from trusted lists" in listed.out and address in listed.out


def test_refused_lists_are_one_line_errors(home: tuple[Path, str],
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root, address = home
    out = root / "scores.json"
    assert run_inprocess(capsys, monkeypatch, "reputation", "export", "--out", str(out)).code == 0
    other = ["--reputation-log", str(root / "other.sqlite")]
    stranger = "0x" + "ab" * 20

    def attempt(*args: str) -> Result:
        return run_inprocess(capsys, monkeypatch, "reputation", "import", *args, *other)

    assert_one_line_error(attempt(str(out)), "opt-in")
    assert_one_line_error(attempt(str(out), "--trust", stranger),
                          "not a signer you trust")
    data = json.loads(out.read_text())
    data["entries"][0]["audits_failed"] += 1
    tampered = root / "tampered.json"
    tampered.write_text(json.dumps(data))
    assert_one_line_error(attempt(str(tampered), "--trust", address),
                          "altered after signing")
    assert_one_line_error(attempt(str(root / "none.json"), "--trust", address),
                          "cannot read score list")
    assert_one_line_error(attempt(str(out), "--trust", "not-an-address"),
                          "not an address")


def test_a_gateway_refuses_to_start_on_an_untrusted_list(home: tuple[Path, str],
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = home
    out = root / "scores.json"
    assert run_inprocess(capsys, monkeypatch, "reputation", "export", "--out", str(out)).code == 0
    started = run_inprocess(capsys, monkeypatch, "gateway", "--node", "http://127.0.0.1:9/v1",
                            "--spend-log", str(root / "gw2" / "spend.sqlite"),
                            "--trust-list", str(out), "--trust", "0x" + "ab" * 20)
    assert_one_line_error(started, "not a signer you trust")
