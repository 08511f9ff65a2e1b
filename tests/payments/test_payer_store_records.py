"""The payer's own record of what it paid (payments/pay/payer_store.py): state and receipts
saved together and read back in order, retired channels kept with why, the files of
earlier versions imported once, a store that cannot be opened or written a PaymentError
that names it, and WAL with ``synchronous=NORMAL`` (no fsync per request)."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path

import pytest
from eth_account import Account

from agoranet.errors import PaymentError
from agoranet.payments.pay.payer_store import ChannelState, PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner

CID, NEW_CID = "0x" + "ab" * 32, "0x" + "cd" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


def _receipt(request_id: str, amount: int, cumulative: int) -> Receipt:
    return SIGNER.sign(Receipt(request_id, CID, 1, 1, amount, cumulative, 31337))


def test_state_and_receipts_are_read_back_as_saved_in_order(tmp_path: Path) -> None:
    store = PayerStore(tmp_path)
    first, second = _receipt("r1", 10, 10), _receipt("r2", 5, 15)
    state = ChannelState(CID, {"salt": "0x00"}, deposited=500, charged=10, voucher=30,
                         receipts=1, spent=10, payments={"r2": [40, 10, 0, 0]})
    store.save(state, first)
    state.charged, state.receipts, state.spent = 15, 2, 15
    store.save(state, second)
    store.save(state)  # no receipt: the state alone
    assert store.receipts() == [first, second]
    assert store.load() == asdict(state)
    store.close()
    again = PayerStore(tmp_path)  # a restarted gateway reads the same
    assert again.receipts() == [first, second] and again.load() == asdict(state)
    assert sum(r.amount for r in again.receipts()) == again.load()["spent"]  # type: ignore[index]
    again.close()


def test_a_replaced_channel_is_retired_with_why_and_its_receipts_stay(tmp_path: Path) -> None:
    store = PayerStore(tmp_path)
    old = ChannelState(CID, {}, deposited=500, charged=10, voucher=30, receipts=1, spent=10)
    store.save(old, _receipt("r1", 10, 10))
    new = ChannelState(NEW_CID, {}, deposited=800)
    store.replace(old, "gone after a chain reset", new)
    newer = ChannelState("0x" + "ef" * 32, {}, deposited=900)
    store.replace(new, "refunded", newer)
    assert store.retired() == [(old, "gone after a chain reset"), (new, "refunded")]
    assert store.load() == asdict(newer)
    assert [r.request_id for r in store.receipts()] == ["r1"]
    store.close()


def test_a_refused_replace_is_a_payment_error_and_is_rolled_back(tmp_path: Path) -> None:
    store = PayerStore(tmp_path)
    old = ChannelState(CID, {}, deposited=500, charged=10)
    store.save(old)
    other = sqlite3.connect(store.path)
    other.execute("CREATE TRIGGER full BEFORE INSERT ON channel "
                  "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    other.commit()
    with pytest.raises(PaymentError,
                       match=r"^cannot save the payer's state: database or disk is full$"):
        store.replace(old, "refunded", ChannelState(NEW_CID, {}, deposited=800))
    assert store.retired() == [] and store.load() == asdict(old)  # neither half written
    other.execute("DROP TRIGGER full")
    other.commit()
    other.close()
    store.replace(old, "refunded", ChannelState(NEW_CID, {}, deposited=800))
    assert store.retired() == [(old, "refunded")]
    store.close()


def test_an_earlier_versions_files_are_imported_once(tmp_path: Path) -> None:
    first, second = _receipt("r1", 10, 10), _receipt("r2", 5, 15)
    state = {**asdict(ChannelState(CID, {"salt": "0x00"}, deposited=500, charged=15,
                                   voucher=40, receipts=2, spent=15)),
             "dropped_field": 1}  # a field this version no longer has is left out
    (tmp_path / "channel.json").write_text(json.dumps(state), encoding="utf-8")
    (tmp_path / "receipts.jsonl").write_text(
        json.dumps(first.to_json()) + "\n\n" + json.dumps(second.to_json()) + "\n",
        encoding="utf-8")
    store = PayerStore(tmp_path)
    assert store.receipts() == [first, second]
    loaded = store.load()
    assert loaded is not None and loaded["charged"] == 15 and "dropped_field" not in loaded
    store.close()
    again = PayerStore(tmp_path)  # the store exists now: nothing imported a second time
    assert again.receipts() == [first, second]
    again.close()


def test_receipts_without_a_state_file_are_not_imported(tmp_path: Path) -> None:
    (tmp_path / "receipts.jsonl").write_text(json.dumps(_receipt("r1", 10, 10).to_json()),
                                             encoding="utf-8")
    store = PayerStore(tmp_path)
    assert store.load() is None and store.receipts() == []
    store.close()


def test_a_store_that_cannot_be_opened_is_a_payment_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "payer.sqlite").write_bytes(b"not a database, but long enough to be read " * 4)
    with pytest.raises(PaymentError, match=r"^cannot open the payer's store .*payer\.sqlite: "):
        PayerStore(tmp_path)


def test_the_store_is_wal_without_an_fsync_per_request_and_shared_by_threads(
        tmp_path: Path) -> None:
    store = PayerStore(tmp_path)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    errors: list[BaseException] = []

    def save(i: int) -> None:
        try:
            store.save(ChannelState(CID, {}, charged=i), _receipt(f"r{i}", 1, i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(store.receipts()) == 8
    store.close()
