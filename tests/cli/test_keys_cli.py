"""``agoranet keys`` and ``agoranet spend --by key``, through ``main()`` as the console runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import assert_one_line_error, run_inprocess

from agoranet.gateway.keystore import KeyStore
from agoranet.gateway.spendlog import SpendLog, SpendRow


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGORANET_HOME", str(tmp_path))
    for name in ("AGORANET_GATEWAY_SPEND_LOG", "AGORANET_GATEWAY_KEY_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    return tmp_path


def test_create_list_show_top_up_revoke(home: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def run(*args: str):  # type: ignore[no-untyped-def]
        return run_inprocess(capsys, monkeypatch, "keys", *args)

    made = run("create", "research-team", "--budget", "2.50", "--per-day", "0.5",
               "--models", "tiny*", "--expires", "7d", "--max-price-out", "300")
    assert made.code == 0, made.err
    [secret] = [line for line in made.out.splitlines() if line.startswith("agn-")]
    assert made.out.count(secret) == 1  # printed once, here
    assert run("create", "helper-with-a-very-long-name", "--budget", "1",
               "--parent", "research-team").code == 0
    store = KeyStore(home / "gateway" / "keys.sqlite")  # the gateway's default place
    assert store.authenticate(secret)[0].budget == 2_500_000
    assert (home / "gateway" / "owner.key").stat().st_mode & 0o077 == 0
    key = store.get("research-team")
    store.settle(store.reserve(key.id, 250_000, "r", "tiny"), 125_000)
    store.close()
    listed = run("list")
    assert listed.code == 0
    lines = listed.out.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["name", "parent", "budget", "spent", "reserved", "remaining",
                                "expiry", "status"]
    team = next(line for line in lines if line.startswith("research-te~"))
    assert team.split()[1:6] == ["owner", "2.50", "0.125", "0.00", "2.375"]
    assert "helper-with~" in listed.out and "research-te~" in listed.out
    data = json.loads(run("list", "--json").out)
    assert {k["name"]: k["remaining"] for k in data}["research-team"] == 2_375_000
    assert not any(secret in json.dumps(k) for k in data)
    shown = run("show", "research-team")
    assert "tiny*" in shown.out and "0.50" in shown.out and secret not in shown.out
    assert_one_line_error(run("create", "greedy", "--budget", "3", "--parent",
                              "research-team"), "has 2375000 base units left")
    assert_one_line_error(run("top-up", "helper-with-a-very-long-name", "1.5"),
                          "base units left")
    assert run("top-up", "helper-with-a-very-long-name", "1").code == 0
    assert_one_line_error(run("create", "x", "--budget", "1", "--expires", "soon"), "--expires")
    assert_one_line_error(run("create", "y", "--budget", "0.0000001"), "decimals")
    assert_one_line_error(run("show", "nobody"), "no key named 'nobody'")
    revoked = run("revoke", "research-team")
    assert revoked.code == 0 and "helper-with-a-very-long-name" in revoked.out
    assert run("list").out.count("revoked") == 2
    assert_one_line_error(run("revoke", "owner"), "cannot be revoked")


def test_spend_by_key(home: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    log = SpendLog(home / "gateway" / "spend.sqlite")
    for key, amount in (("alpha", 30), ("beta", 12), ("alpha", 5), (None, 7)):
        log.add(SpendRow(f"r-{amount}", "tiny", "http://n/v1", 1, 1, amount, None, 1.0, "ok",
                         key=key))
    log.close()
    result = run_inprocess(capsys, monkeypatch, "spend", "--by", "key", "--base-units")
    assert result.code == 0, result.err
    rows = {line.split()[0]: line.split() for line in result.out.splitlines() if line.strip()}
    assert rows["alpha"][3] == "35" and rows["beta"][3] == "12" and rows["-"][3] == "7"
