"""``agoranet node --ledger postgresql://...``: a PostgreSQL ledger that cannot be used is a
plain one-line error before the model loads (``--model`` names an empty directory, so
an error about the ledger proves it was checked first), its password never shown."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from clirun import assert_one_line_error, run_inprocess, run_subprocess

from pg_testserver import fresh_database, pg_server  # noqa: F401  (a fixture)

ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "AGORANET_WALLET_PASSWORD": "pw-pw-pw-1"}


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An agoranet home with a wallet, and an empty model directory in it."""
    env = {**ENV, "AGORANET_HOME": str(tmp_path)}
    assert run_subprocess("wallet", "new", env=env, timeout=60).code == 0
    (tmp_path / "empty-model").mkdir()
    return tmp_path


def test_an_unreachable_postgresql_ledger_fails_before_loading(home: Path,
                                                               closed_port: int) -> None:
    url = f"postgresql://agoranet:s3cret@127.0.0.1:{closed_port}/ledger"
    result = run_subprocess("node", "--model", str(home / "empty-model"), "--port", "0",
                            "--price-out", "5", "--ledger", url,
                            env={**ENV, "AGORANET_HOME": str(home)}, timeout=60)
    assert_one_line_error(
        result, f"cannot reach the PostgreSQL ledger postgresql://agoranet:***@127.0.0.1:"
        f"{closed_port}/ledger")
    assert "s3cret" not in result.err + result.out


def test_a_postgresql_ledger_without_psycopg_says_what_to_install(
        home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORANET_HOME", str(home))
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", ENV["AGORANET_WALLET_PASSWORD"])
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    for module in ("agoranet.payments.accept.pg_ledger", "agoranet.payments.accept.pg_group"):
        monkeypatch.delitem(sys.modules, module, raising=False)  # imported by other tests
    result = run_inprocess(capsys, monkeypatch, "node", "--model", str(home / "empty-model"),
                           "--port", "0", "--price-out", "5", "--ledger",
                           "postgresql://127.0.0.1:1/ledger")
    assert_one_line_error(result, "a PostgreSQL ledger needs psycopg")
    assert "pip install 'agoranet[postgres]'" in result.err


def test_earnings_read_a_postgresql_ledger(pg_server: str, capsys: pytest.CaptureFixture[str],  # noqa: F811
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from eth_account import Account

    from agoranet.payments.accept.pg_ledger import PgLedger
    from agoranet.payments.receipts import ReceiptSigner

    url = fresh_database(pg_server)
    book = PgLedger(url)
    cid = "0x" + "aa" * 32
    book.ensure_channel(cid, "{}", "0xpayer", 0)
    hold = book.accept_voucher("r1", cid, 70, "0x" + "22" * 65, 70)
    book.commit(hold, 1, 1, 70, ReceiptSigner(bytes(Account.create().key)).sign, 31337)
    book.record_claim({cid: 50}, "0x01", 21000)
    book.close()
    monkeypatch.setenv("COLUMNS", "200")
    result = run_inprocess(capsys, monkeypatch, "node", "earnings", "--ledger", url, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["total"]["charged"] == 70 and data["total"]["claimed"] == 50
    assert data["total"]["unclaimed"] == 20 and data["channels"][0]["channel"] == cid
