"""Which writes defer their sync (payments/accept/group_commit.py), and what they then owe.

Only a thread inside :meth:`Deferral.deferring` (the ledger writer's, writing a group)
defers: every other thread -- the settlement loop, a test, a thread that never deferred
-- syncs its own durable writes and owes nothing. Inside the block, a durable write (an
accepted voucher) owes the group a sync; a write that syncs nothing (a charge) owes none;
what is owed is told once.
"""

from __future__ import annotations

import threading
from pathlib import Path

from eth_account import Account

from agoranet.payments.accept.group_commit import Deferral
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger
from agoranet.payments.receipts import ReceiptSigner

NODE = ReceiptSigner(bytes(Account.create().key))
CID = "0x" + "07" * 32


def _on_a_new_thread(deferral: Deferral) -> tuple[bool, bool]:
    seen: list[tuple[bool, bool]] = []
    thread = threading.Thread(target=lambda: seen.append((deferral.defers(True),
                                                          deferral.take_owed())))
    thread.start()
    thread.join(10)
    return seen[0]


def test_only_a_thread_inside_the_block_defers() -> None:
    deferral = Deferral()
    assert (deferral.defers(True), deferral.take_owed()) == (False, False)  # never deferred
    with deferral.deferring():
        assert deferral.defers(True) and not deferral.defers(False)
        assert _on_a_new_thread(deferral) == (False, False)  # another thread: its own syncs
        assert not deferral.take_owed()
        deferral.owe()
        assert deferral.take_owed() and not deferral.take_owed()  # told once
    assert not deferral.defers(True)  # the block ended


def test_a_group_ledger_write_owes_a_sync_only_inside_the_block(tmp_path: Path) -> None:
    ledger = SqliteGroupLedger(tmp_path / "ledger.sqlite")
    try:
        ledger.ensure_channel(CID, "{}", NODE.address, 0)
        first = ledger.accept_voucher("r1", CID, 1000, "0x", 1000)  # outside: synced itself
        assert not ledger.deferral.take_owed()
        ledger.commit(first, 1, 1, 100, NODE.sign, 31337)
        with ledger.deferral.deferring():
            second = ledger.accept_voucher("r2", CID, 1100, "0x", 1000)
            assert ledger.deferral.take_owed()  # the voucher waits for the group's sync
            ledger.commit(second, 1, 1, 100, NODE.sign, 31337)
            assert not ledger.deferral.take_owed()  # a charge syncs nothing: owes nothing
        ledger.sync()
        assert ledger.channel(CID).charged == 200
    finally:
        ledger.close()
