"""The payer's store checkpoints its log on a thread of its own (named for it), never on
the event loop that saves each payment, and what it saved is all there afterwards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from eth_account import Account

from agoranet.payments.pay.payer_store import ChannelState, PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.sqlite_checkpoints import CHECKPOINT_EVERY

CID = "0x" + "ab" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))
THREAD = "agoranet-payer-checkpoints"


def test_saves_are_checkpointed_on_the_stores_own_thread(tmp_path: Path) -> None:
    store = PayerStore(tmp_path)
    state = ChannelState(CID, {"salt": "0x00"}, deposited=10**9)
    receipt = SIGNER.sign(Receipt("r0", CID, 1, 1, 3, 3, 31337))
    try:
        for i in range(CHECKPOINT_EVERY + 1):
            state.charged = state.spent = 3 * (i + 1)
            state.receipts = i + 1
            store.save(state, receipt if i == 0 else None)
        deadline = time.monotonic() + 20
        while store._checkpoints.checkpoints < 1:
            assert time.monotonic() < deadline, "the store's log was never checkpointed"
            time.sleep(0.01)
        assert THREAD in {t.name for t in threading.enumerate()}
    finally:
        store.close()
    assert THREAD not in {t.name for t in threading.enumerate()}
    again = PayerStore(tmp_path)
    try:
        saved = again.load()
        assert saved is not None and saved["charged"] == 3 * (CHECKPOINT_EVERY + 1)
        assert again.receipts() == [receipt]
    finally:
        again.close()
