"""The SQLite ledger's durability per write: an accepted voucher is fsync'd
(``synchronous=FULL``) before the work it pays for; a charge is not (``NORMAL``: durable
against a crash of the process, and against a power loss from the next voucher on). The
connection switches mode only when a write asks for the other one."""

from __future__ import annotations

from pathlib import Path

from eth_account import Account

from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import ReceiptSigner

SIGNER = ReceiptSigner(bytes(Account.create().key))
CID = "0x" + "0d" * 32
FULL, NORMAL = 2, 1  # PRAGMA synchronous's answers


def test_vouchers_are_fsyncd_charges_are_not_and_the_mode_switches_only_on_change(
        tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)

    def mode() -> int:
        return int(ledger._read("PRAGMA synchronous")[0][0])

    def switches() -> list[str]:
        return [s for s in statements if s.startswith("PRAGMA synchronous=")]

    assert mode() == FULL
    ledger.ensure_channel(CID, "{}", "0xpayer", 0)
    hold = ledger.accept_voucher("r1", CID, 100, "0x" + "22" * 65, 100)
    assert switches() == [] and mode() == FULL  # already FULL: nothing to switch
    ledger.commit(hold, 1, 1, 30, SIGNER.sign, 31337)
    assert switches() == ["PRAGMA synchronous=NORMAL"] and mode() == NORMAL
    hold = ledger.accept_voucher("r2", CID, 130, "0x" + "22" * 65, 100)
    assert switches()[1:] == ["PRAGMA synchronous=FULL"] and mode() == FULL
    receipt = ledger.commit(hold, 1, 1, 20, SIGNER.sign, 31337)
    assert switches()[2:] == ["PRAGMA synchronous=NORMAL"]
    assert receipt.cumulative == ledger.channel(CID).charged == 50  # type: ignore[union-attr]
    ledger.close()


def test_a_stream_of_running_receipts_switches_once_and_so_does_its_release(
        tmp_path: Path) -> None:
    """Running receipts, the final charge and a release are charges (``NORMAL``): a stream
    of them switches the mode once, and the next voucher switches it back."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    ledger.ensure_channel(CID, "{}", "0xpayer", 0)
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)

    def switches() -> list[str]:
        return [s.removeprefix("PRAGMA synchronous=") for s in statements
                if s.startswith("PRAGMA synchronous=")]

    hold = ledger.accept_voucher("r1", CID, 100, "0x" + "22" * 65, 100)
    ledger.progress(hold, 1, 4, 5, SIGNER.sign, 31337)
    assert switches() == ["NORMAL"]
    ledger.progress(hold, 1, 8, 9, SIGNER.sign, 31337)
    ledger.commit(hold, 1, 10, 11, SIGNER.sign, 31337)
    assert switches() == ["NORMAL"]
    hold = ledger.accept_voucher("r2", CID, 111, "0x" + "22" * 65, 100)
    assert switches() == ["NORMAL", "FULL"]
    sent = ledger.progress(hold, 1, 2, 3, SIGNER.sign, 31337)
    assert ledger.release(hold) == sent  # the buyer holds that receipt: it is charged
    assert switches() == ["NORMAL", "FULL", "NORMAL"]
    hold = ledger.accept_voucher("r3", CID, 114, "0x" + "22" * 65, 100)
    assert ledger.release(hold) is None  # nothing sent: released, nothing charged
    assert switches() == ["NORMAL", "FULL", "NORMAL", "FULL", "NORMAL"]
    assert ledger.channel(CID).charged == 14  # type: ignore[union-attr]
    assert sum(r.amount for r in ledger.receipts(CID)) == 14
    ledger.close()


def test_a_retract_is_not_fsyncd(tmp_path: Path) -> None:
    """A retract undoes a hold nothing was served for (``NORMAL``): lost in a power loss,
    the hold is left, and the next start's recover() releases it, nothing charged."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    ledger.ensure_channel(CID, "{}", "0xpayer", 0)
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    hold = ledger.accept_voucher("r1", CID, 100, "0x" + "22" * 65, 100)
    ledger.retract(hold)
    assert [s for s in statements if s.startswith("PRAGMA synchronous=")] == [
        "PRAGMA synchronous=NORMAL"]
    assert ledger.channel(CID) is None
    ledger.close()
