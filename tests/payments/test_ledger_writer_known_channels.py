"""The ledger writer remembers the channels it accepted vouchers on (payments/accept/ledger_writer.py).

A voucher on a channel the writer has already accepted one on skips the ledger's
``ensure_channel`` look-up (the row exists: rows are never deleted). What that memory must
never do:

- accept a voucher on a channel the ledger does not know: if the ledger has no row for
  it after all, the channel is created (with the baseline given) and the voucher accepted
  in the same trip, as for a channel never seen;
- stand in for the chain: a known channel whose on-chain state now refuses vouchers (a
  pending withdrawal, a channel emptied) is refused, and nothing is held.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from x402.mechanisms.evm.batch_settlement import errors as bs_errors

from agoranet.chain.executor import ChainExecutor
from agoranet.errors import PaymentRequiredError
from agoranet.payments.accept.ledger import ChannelRecord
from agoranet.payments.accept.ledger_writer import LedgerWriter
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.accept.verifier import OnchainState

from .acceptor_support import CID, MAX, WORST, Chain, acceptor, pay
from .test_ledger_writer import CHAIN, NODE, cid

pytestmark = pytest.mark.timeout(30)
CHANNEL = ("{}", NODE.address, 0)


class Counting(SqliteGroupLedger):
    """A group-commit ledger counting its ``ensure_channel`` calls."""

    ensured = 0

    def ensure_channel(self, channel_id: str, config: str, payer: str,
                       baseline: int) -> ChannelRecord:
        self.ensured += 1
        return super().ensure_channel(channel_id, config, payer, baseline)


class PlainCounting(SqliteLedger):
    ensured = 0

    def ensure_channel(self, channel_id: str, config: str, payer: str,
                       baseline: int) -> ChannelRecord:
        self.ensured += 1
        return super().ensure_channel(channel_id, config, payer, baseline)


@pytest.mark.parametrize("kind", [Counting, PlainCounting])
async def test_a_channel_the_writer_accepted_on_is_not_looked_up_again(
        kind: Any, tmp_path: Path) -> None:
    ledger = kind(tmp_path / "ledger.sqlite")
    writer = LedgerWriter(ledger)
    try:
        charged = 0
        for n in range(3):
            hold = await writer.accept_voucher(f"r{n}", cid(1), charged + MAX, "0x", MAX,
                                               channel=CHANNEL)
            charged = (await writer.commit(hold, 1, 1, 10, NODE.sign, CHAIN)).cumulative
        assert ledger.ensured == 1  # the first voucher only
        assert charged == 30
        # another channel is looked up (and created) once, in any letter case
        held = await writer.accept_voucher("s0", cid(2).upper().replace("0X", "0x"), MAX,
                                           "0x", MAX, channel=CHANNEL)
        await writer.release(held)
        await writer.accept_voucher("s1", cid(2), MAX, "0x", MAX, channel=CHANNEL)
        assert ledger.ensured == 2
        record = ledger.channel(cid(2))
        assert record is not None and record.pending_request == "s1"
    finally:
        writer.close()
        ledger.close()


async def test_a_channel_the_ledger_does_not_know_after_all_is_made_and_accepted(
        tmp_path: Path) -> None:
    """The writer saw the channel, its ledger (here: another file put in its place) has no
    row for it: the voucher is not refused as on an unknown channel; the channel is made
    with the baseline given, and the voucher held on it."""
    first = SqliteLedger(tmp_path / "first.sqlite")
    second = SqliteLedger(tmp_path / "second.sqlite")
    writer = LedgerWriter(first)
    try:
        hold = await writer.accept_voucher("r1", cid(3), MAX, "0x", MAX, channel=CHANNEL)
        await writer.commit(hold, 1, 1, 10, NODE.sign, CHAIN)
        writer.ledger = second
        again = await writer.accept_voucher("r2", cid(3), 7 + MAX, "0x", MAX,
                                            channel=("{}", NODE.address, 7))
        assert (again.charged_before, again.voucher_amount) == (7, 7 + MAX)
        record = second.channel(cid(3))
        assert record is not None and (record.charged, record.claimed) == (7, 7)
        assert record.pending_request == "r2"
        # without the channel's terms the writer makes nothing: the ledger's refusal stands
        writer.ledger = SqliteLedger(tmp_path / "third.sqlite")
        with pytest.raises(Exception, match="not known"):
            await writer.accept_voucher("r3", cid(3), 7 + MAX, "0x", MAX)
        writer.ledger.close()
    finally:
        writer.close()
        first.close()
        second.close()


class Withdrawing(Chain):
    """A chain whose channel may have a withdrawal pending."""

    withdraw_at = 0

    def read(self, channel_id: str) -> OnchainState:
        self.reads += 1
        return OnchainState(self.balance, self.claimed, self.withdraw_at, 0, time.monotonic())


@pytest.fixture
def executor() -> Iterator[ChainExecutor]:
    ex = ChainExecutor(workers=1, timeout=1.0)
    yield ex
    ex.close()


@pytest.mark.parametrize("change, reason", [
    ({"withdraw_at": 1_700_000_000}, "invalid_batch_settlement_evm_channel_withdrawing"),
    ({"balance": 0}, bs_errors.ERR_CHANNEL_NOT_FOUND)])
async def test_a_known_channel_the_chain_now_refuses_holds_nothing(
        change: dict[str, int], reason: str, executor: ChainExecutor) -> None:
    chain = Withdrawing()
    ledger = SqliteLedger(":memory:")
    acc = acceptor(chain, ledger, executor)
    acc.cache.ttl = 0.0  # every voucher reads the chain
    try:
        auth = await acc.authorize(pay(MAX), WORST, "r1")
        receipt, _ = acc.charge(auth, 1, 1, 100)
        for name, value in change.items():
            setattr(chain, name, value)
        with pytest.raises(PaymentRequiredError) as refused:
            await acc.authorize(pay(receipt.cumulative + MAX), WORST, "r2")
        assert refused.value.reason == reason
        record = ledger.channel(CID)
        assert record is not None and record.pending_request is None
        assert record.voucher_amount == MAX  # the refused voucher was never stored
    finally:
        acc.writer.close()
        ledger.close()
