"""A save the database refuses (here a trigger stands in for a full disk) is a PaymentError
that says so, and is rolled back: nothing half-written, the store still usable after."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from eth_account import Account

from agoranet.errors import PaymentError
from agoranet.payments.pay.payer_store import ChannelState, PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner

CID = "0x" + "ab" * 32


def test_a_refused_save_is_a_payment_error_and_is_rolled_back(tmp_path: Path) -> None:
    store = PayerStore(tmp_path)
    store.save(ChannelState(CID, {}, deposited=500, charged=10, voucher=30))
    other = sqlite3.connect(store.path)
    other.execute("CREATE TRIGGER full BEFORE INSERT ON channel "
                  "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    other.commit()
    receipt = ReceiptSigner(bytes(Account.create().key)).sign(
        Receipt("r1", CID, 1, 1, 10, 20, 31337))
    with pytest.raises(PaymentError,
                       match=r"^cannot save the payer's state: database or disk is full$"):
        store.save(ChannelState(CID, {}, deposited=500, charged=20, voucher=40), receipt)
    assert store.receipts() == []  # the receipt's row went with the refused state
    assert store.load()["charged"] == 10  # type: ignore[index]
    other.execute("DROP TRIGGER full")
    other.commit()
    other.close()
    store.save(ChannelState(CID, {}, deposited=500, charged=20, voucher=40), receipt)
    assert store.receipts() == [receipt] and store.load()["charged"] == 20  # type: ignore[index]
    store.close()
