"""The transactions a node's earnings count: each claim transaction once, each settle; a
settle that found nothing left to settle sent none (the chain was only read) and is not
counted, on either ledger."""

from __future__ import annotations

from eth_account import Account

from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers

CID = "0x" + "12" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


def test_a_settle_of_nothing_is_no_transaction(ledgers: Ledgers) -> None:
    book = ledgers.open()
    book.ensure_channel(CID, "{}", "0xpayer", 0)
    book.commit(book.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 40, SIGNER.sign, 1)
    book.record_claim({CID: 40}, "0xclaim", 50_000)
    book.record_settle("", 0, 0)  # someone settled for the node already: nothing was sent
    assert book.unsettled() == 0 and book.gas_used() == (1, 50_000)
    book.commit(book.accept_voucher("r2", CID, 140, "0xs2", 100), 1, 1, 10, SIGNER.sign, 1)
    book.record_claim({CID: 50}, "0xclaim2", 40_000)
    book.record_settle("0xsettle", 10, 30_000)
    assert book.gas_used() == (3, 120_000)
    assert [(e.claimed, e.settled) for e in book.earnings()] == [(50, 50)]
