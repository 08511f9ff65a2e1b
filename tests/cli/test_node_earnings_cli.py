"""``agoranet node earnings``: a damaged ledger is a plain error; failing claims and
pending settles are shown."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from clirun import assert_one_line_error, run_inprocess
from eth_account import Account

from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import ReceiptSigner

SIGNER = ReceiptSigner(bytes(Account.create().key))


@pytest.mark.parametrize("content", [b"", b"garbage, not SQLite " * 100])
def test_a_damaged_ledger_is_a_plain_error(tmp_path: Path, content: bytes,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(content)
    result = run_inprocess(capsys, monkeypatch, "node", "earnings", "--ledger", str(path))
    assert_one_line_error(result, str(path))
    assert path.read_bytes() == content


def test_earnings_show_failing_claims_and_pending_settles(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.sqlite"
    book = SqliteLedger(path)
    good, bad = "0x" + "aa" * 32, "0x" + "bb" * 32
    for cid in (good, bad):
        book.ensure_channel(cid, json.dumps({}), "0xpayer", 0)
        hold = book.accept_voucher(f"r-{cid}", cid, 70, "0x" + "22" * 65, 70)
        book.commit(hold, 1, 1, 70, SIGNER.sign, 31337)
    book.record_claim({good: 70}, "0x01", 21000)  # claimed, the settle failed
    book.record_claim_failure(bad, "claim failed: InvalidSignature", time.time(),
                              lambda n: 30.0)
    book.close()
    monkeypatch.setenv("COLUMNS", "200")
    result = run_inprocess(capsys, monkeypatch, "node", "earnings", "--ledger", str(path))
    assert result.code == 0, result.err
    assert "to settle" in result.out and "not settled to the node yet" in result.out
    assert f"claim failing on channel {bad}: 1 time(s)" in result.out
    assert "InvalidSignature" in result.out
