"""A busy node's ledger keeps its write-ahead log bounded: paid requests one after the
other through the production path (``SqliteGroupLedger`` behind ``LedgerWriter``, a voucher
accepted durably, then charged), with the ledger's own background checkpoints.

Before the checkpoints restarted the log, it held every page written since the ledger
opened -- about 44 KB a paid request, 65 MB after these 1,500 -- and every voucher's sync
appended to it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from agoranet.payments.accept.ledger_writer import LedgerWriter
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger
from agoranet.payments.receipts import ReceiptSigner

CHANNEL = "0x" + "11" * 32
REQUESTS = 1_500  # 3,000 writes: six checkpoints at the default of one per 500 writes


def test_the_ledger_log_stays_bounded_under_steady_paid_traffic(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = SqliteGroupLedger(path)
    writer = LedgerWriter(ledger)
    signer = ReceiptSigner(b"\x01" * 32)
    ledger.ensure_channel(CHANNEL, "{}", "0x" + "22" * 20, 0)
    log = Path(f"{path}-wal")
    largest = 0

    async def serve() -> int:
        nonlocal largest
        charged = 0
        for _ in range(REQUESTS):
            hold = await writer.accept_voucher(uuid.uuid4().hex, CHANNEL, charged + 1_000,
                                               "0x" + "ab" * 65, 1_000)
            receipt = await writer.commit(hold, 1, 0, 700, signer.sign, 1)
            charged = receipt.cumulative
            largest = max(largest, log.stat().st_size)
        return charged

    try:
        assert asyncio.run(serve()) == 700 * REQUESTS
        checkpoints = ledger._checkpoints
        assert checkpoints is not None and checkpoints.restarts >= 3
    finally:
        writer.close()
        ledger.close()
    # ~10 pages a request: 500 writes between checkpoints are ~11 MB of log
    assert largest < 30_000_000, f"the ledger's log grew to {largest} bytes"
    assert sum(r.amount for r in SqliteGroupLedger(path).receipts(CHANNEL)) == 700 * REQUESTS
