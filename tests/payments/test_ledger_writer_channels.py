"""A channel created through the ledger writer is the ledger's own record of it.

:meth:`LedgerWriter.ensure_channel` runs the ledger's ``ensure_channel`` on the writer
thread: the record it returns (and the ledger keeps) has the channel's id, config, payer
and the baseline it was created at as its charged total; a second call changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agoranet.payments.accept.ledger_writer import LedgerWriter
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger
from agoranet.payments.accept.sqlite_ledger import SqliteLedger

pytestmark = pytest.mark.timeout(30)

CID = "0x" + "12" * 32
CONFIG = '{"salt": "0x00"}'
PAYER = "0x" + "ab" * 20


@pytest.mark.parametrize("group", [False, True])
async def test_a_channel_made_through_the_writer_is_the_ledgers(group: bool,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = SqliteGroupLedger(path) if group else SqliteLedger(path)
    writer = LedgerWriter(ledger)
    try:
        record = await writer.ensure_channel(CID, CONFIG, PAYER, 7_000)
        assert (record.channel_id, record.config, record.payer, record.charged) == \
            (CID, CONFIG, PAYER, 7_000)
        again = await writer.ensure_channel(CID, '{"other": 1}', "0x" + "cd" * 20, 9_000)
        assert again == record  # it exists: kept as it was
        stored = ledger.channel(CID)
        assert stored is not None and (stored.charged, stored.claimed) == (7_000, 7_000)
        assert stored.config == CONFIG
    finally:
        writer.close()
        ledger.close()
