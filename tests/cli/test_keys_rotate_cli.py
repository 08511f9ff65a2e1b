"""``agoranet keys rotate``, through ``main()`` as the console runs it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from clirun import assert_one_line_error, run_inprocess

from agoranet.errors import AuthenticationError
from agoranet.gateway.keystore import KeyStore


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGORANET_HOME", str(tmp_path))
    for name in ("AGORANET_GATEWAY_SPEND_LOG", "AGORANET_GATEWAY_KEY_STORE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_rotate_prints_the_new_secret_once_and_honours_grace(
        home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def run(*args: str):  # type: ignore[no-untyped-def]
        return run_inprocess(capsys, monkeypatch, "keys", *args)

    def secret(out: str) -> str:
        [line] = [line for line in out.splitlines() if line.startswith("agn-")]
        return line

    first = secret(run("create", "agent", "--budget", "1").out)
    graced = run("rotate", "agent", "--grace", "10m")
    assert graced.code == 0, graced.err
    second = secret(graced.out)
    assert graced.out.count(second) == 1 and first not in graced.out
    assert "old secret works for 10m more" in " ".join(graced.out.split())
    store = KeyStore(home / "gateway" / "keys.sqlite")
    assert store.authenticate(first)[0].name == store.authenticate(second)[0].name == "agent"
    with pytest.raises(AuthenticationError):
        store.authenticate(first, now=time.time() + 601)
    third = secret(run("rotate", "agent").out)
    for old in (first, second):
        with pytest.raises(AuthenticationError):
            store.authenticate(old)
    assert store.authenticate(third)[0].budget == 1_000_000
    owner_file = home / "gateway" / "owner.key"
    old_owner = owner_file.read_text().strip()
    rotated = run("rotate", "owner")
    new_owner = owner_file.read_text().strip()
    assert rotated.code == 0 and new_owner != old_owner and new_owner not in rotated.out
    assert str(owner_file) in "".join(rotated.out.split())
    assert store.authenticate(new_owner)[0].name == "owner"
    store.close()
    assert_one_line_error(run("rotate", "agent", "--grace", "soon"), "--grace 'soon'")
    assert_one_line_error(run("rotate", "nobody"), "no key named 'nobody'")
    assert_one_line_error(run("rotate", "agent", "--grace", "31d"), "grace period")
