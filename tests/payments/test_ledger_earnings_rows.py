"""A node's earnings, channel by channel, as either ledger reports them: who pays, what
was charged, claimed, settled and is waiting for a settle, how many requests, and the
claim failures in a row with the last one's error; receipts read back in order."""

from __future__ import annotations

from eth_account import Account

from agoranet.payments.accept.ledger import Earnings
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers

CID, OTHER = "0x" + "16" * 32, "0x" + "17" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


def test_each_channels_earnings_in_full(ledgers: Ledgers) -> None:
    book = ledgers.open()
    book.ensure_channel(CID, "{}", "0xpayer", 0)
    book.ensure_channel(OTHER, "{}", "0xother", 0)
    for i, amount in enumerate((10, 20, 5)):
        ch = book.channel(CID)
        hold = book.accept_voucher(f"r{i}", CID, ch.charged + 100, f"0xs{i}", 100)
        book.commit(hold, 1, 1, amount, SIGNER.sign, 1)
    book.record_claim({CID: 10}, "0xclaim1", 1)
    book.record_settle("0xsettle1", 10, 1)
    book.record_claim({CID: 30}, "0xclaim2", 1)  # claimed 30, 20 of it not settled yet
    for _ in range(2):
        book.record_claim_failure(CID, "boom", 100.0, lambda n: 30.0)
    assert book.earnings() == [
        Earnings(CID, "0xpayer", 35, 30, 10, 3, 20, 2, "boom"),
        Earnings(OTHER, "0xother", 0, 0, 0, 0, 0, 0, ""),
    ]
    assert [r.cumulative for r in book.receipts()] == [10, 30, 35]
    assert [r.request_id for r in book.receipts(CID.upper().replace("0X", "0x"))] == [
        "r0", "r1", "r2"]
