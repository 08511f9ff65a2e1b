"""What only a shared PostgreSQL ledger has: several replicas of one node on it.

One request per channel at a time holds across replicas; a live replica's hold is
never released by another, a dead one's is (its lease ran out); one replica at a time
claims; a server that cannot be reached is a clear LedgerError naming it, without its
password. (The protocol itself is checked by the shared suite in test_ledger*.py.)
"""

from __future__ import annotations

import threading

import pytest
from eth_account import Account

from agoranet.errors import LedgerError
from agoranet.payments.accept.ledger import VoucherRefused
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers, fresh_database

CID = "0x" + "11" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


@pytest.fixture
def pg(pg_server: str) -> Ledgers:
    return Ledgers("postgresql", fresh_database(pg_server))


@pytest.fixture(autouse=True)
def _close(pg: Ledgers):  # type: ignore[no-untyped-def]
    yield
    pg.close()


def test_replicas_race_on_one_channel(pg: Ledgers) -> None:
    """50 requests on two replicas offer the same next voucher at once: one holds it."""
    a, b = pg.open(), pg.open()
    a.ensure_channel(CID, "{}", "0xpayer", 0)
    wins: list[str] = []
    refusals: list[str] = []
    barrier = threading.Barrier(50)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            (a, b)[i % 2].accept_voucher(f"r{i}", CID, 100, "0xs", 100)
            wins.append(f"r{i}")
        except VoucherRefused as exc:
            refusals.append(exc.reason)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and refusals == ["busy"] * 49
    assert a.channel(CID).pending_request == b.channel(CID).pending_request == wins[0]


def test_a_live_replicas_hold_is_never_released_by_another(pg: Ledgers) -> None:
    a, b = pg.open(), pg.open()
    a.ensure_channel(CID, "{}", "0xp", 0)
    hold = a.accept_voucher("r1", CID, 100, "0xs1", 100)
    a.progress(hold, 1, 16, 17, SIGNER.sign, 1)
    assert b.recover() == 0  # a restarting replica leaves its sibling's request alone
    with pytest.raises(VoucherRefused) as busy:
        b.accept_voucher("r2", CID, 100, "0xs2", 100)
    assert busy.value.reason == "busy"
    receipt = a.commit(hold, 1, 20, 21, SIGNER.sign, 1)
    assert b.channel(CID).charged == receipt.cumulative == 21


def test_a_dead_replicas_hold_is_released_by_the_next_voucher(pg: Ledgers) -> None:
    """SIGKILL mid-stream: once its lease runs out, the next voucher on the channel finds
    the hold released and charged the running receipt the buyer got."""
    a, b = pg.open(), pg.open()
    a.ensure_channel(CID, "{}", "0xp", 0)
    a.commit(a.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 10, SIGNER.sign, 1)
    hold = a.accept_voucher("r2", CID, 110, "0xs2", 100)
    sent = a.progress(hold, 1, 16, 25, SIGNER.sign, 1)
    pg.crash(a)
    with pytest.raises(VoucherRefused) as stale:  # the buyer's next voucher, for the old total
        b.accept_voucher("r3", CID, 110, "0xs3", 100)
    assert stale.value.reason == "mismatch" and stale.value.receipt == sent
    assert b.channel(CID).charged == 35 and b.channel(CID).pending_request is None
    hold3 = b.accept_voucher("r3", CID, 135, "0xs3", 100)  # resynced: served
    assert b.commit(hold3, 1, 1, 5, SIGNER.sign, 1).cumulative == 40
    assert [r.request_id for r in b.receipts(CID)] == ["r1", "r2", "r3"]


def test_one_replica_claims_and_the_next_takes_over(pg: Ledgers) -> None:
    a, b = pg.open(), pg.open()
    a.ensure_channel(CID, "{}", "0xp", 0)
    a.commit(a.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 10, SIGNER.sign, 1)
    [candidate] = a.claim_candidates()  # a claims now
    assert candidate.unclaimed == 10
    assert b.claim_candidates() == [] and b.unsettled() == 0
    a.record_claim({CID: 10}, "0xtx", 1)
    assert a.unsettled() == 10
    pg.crash(a)
    assert b.unsettled() == 10  # b holds the claim lock now, and settles
    b.record_settle("0xtx2", 10, 1)
    assert b.unsettled() == 0 and b.earnings()[0].settled == 10


def test_a_closed_replica_gives_its_lease_up(pg: Ledgers) -> None:
    a, b = pg.open(), pg.open()
    a.ensure_channel(CID, "{}", "0xp", 0)
    a.accept_voucher("r1", CID, 100, "0xs1", 100)  # left held (a bug, or a hard stop)
    a.close()
    assert b.recover() == 1
    assert b.channel(CID).pending_request is None


def test_an_unreachable_server_is_a_clear_error() -> None:
    from agoranet.payments.accept.pg_ledger import PgLedger

    url = "postgresql://agoranet:s3cret@127.0.0.1:9/ledger"  # port 9: nothing listens
    with pytest.raises(LedgerError, match="cannot reach the PostgreSQL ledger") as info:
        PgLedger(url, connect_timeout=2)
    assert "s3cret" not in str(info.value) and "agoranet:***@127.0.0.1:9" in str(info.value)
