"""Paid requests through the acceptor's ledger writer (payments/accept/ledger_writer.py): the
event loop keeps running while a voucher is made durable, and many paid requests at once
-- on many channels, and crowding one -- share group commits without breaking a money
rule (one request per channel at a time, every charge receipted, claimed <= receipted).
Fake chain (acceptor_support), real ledgers and signatures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner

from agoranet.chain.executor import ChainExecutor
from agoranet.errors import LedgerError, PaymentRequiredError
from agoranet.payments import x402wire
from agoranet.payments.accept.ledger import Hold
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import verify_receipt

from .acceptor_support import (
    CHAIN,
    MAX,
    NETWORK,
    NODE,
    PAYER,
    TOKEN,
    WORST,
    Chain,
    accepted,
    acceptor,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def executor() -> Iterator[ChainExecutor]:
    ex = ChainExecutor(workers=1, timeout=5.0)
    try:
        yield ex
    finally:
        ex.close()


def channel(salt: int) -> tuple[ChannelConfig, str]:
    config = ChannelConfig.from_dict({
        "payer": PAYER.address, "payerAuthorizer": PAYER.address, "receiver": NODE.address,
        "receiverAuthorizer": NODE.address, "token": TOKEN, "withdrawDelay": 900,
        "salt": "0x" + f"{salt:064x}"})
    return config, compute_channel_id(config, CHAIN).lower()


def pay_on(config: ChannelConfig, channel_id: str, amount: int) -> str:
    fields = sign_voucher(EthAccountSigner(PAYER), channel_id, amount, NETWORK)
    payload = {"type": "voucher", "channelConfig": config.to_dict(), "voucher": fields.to_dict()}
    return x402wire.encode_json({"x402Version": 2, "payload": payload,
                                 "accepted": accepted(amount=MAX)})


class SlowDisk(SqliteLedger):
    """A ledger whose voucher takes until ``disk`` is set to reach the disk (at most 5 s,
    then it fails): an fsync that lasts as long as the test wants."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.disk = threading.Event()
        self.accepting = threading.Event()

    def accept_voucher(self, *args: Any, **kwargs: Any) -> Hold:
        self.accepting.set()
        if not self.disk.wait(5):
            raise LedgerError("the disk never answered (the event loop was blocked)")
        return super().accept_voucher(*args, **kwargs)


async def test_the_event_loop_runs_while_a_voucher_reaches_the_disk(
        tmp_path: Path, executor: ChainExecutor) -> None:
    """Regression: the voucher's fsync'd write ran on the event loop, stopping every other
    request on it until the disk answered."""
    ledger = SlowDisk(tmp_path / "ledger.sqlite")
    node = acceptor(Chain(), ledger, executor)
    config, channel_id = channel(1)
    try:
        paying = asyncio.create_task(node.authorize(pay_on(config, channel_id, MAX), WORST,
                                                    "r1"))
        await asyncio.to_thread(ledger.accepting.wait, 5)

        async def another_request() -> None:  # needs the loop while the disk is busy
            ledger.disk.set()

        await asyncio.wait_for(another_request(), 5)
        auth = await paying
        assert auth.hold is not None and ledger.channel(channel_id).pending_request == "r1"
    finally:
        ledger.disk.set()
        ledger.close()


async def test_many_paid_requests_at_once_keep_the_money_rules(
        tmp_path: Path, executor: ChainExecutor) -> None:
    """Six channels with a stream of requests each and twelve requests crowding a seventh,
    all at once through one acceptor (group commit): authorize, then charge or release
    (as the payment middleware does)."""
    from agoranet.payments.accept.sqlite_group import SqliteGroupLedger

    ledger = SqliteGroupLedger(tmp_path / "ledger.sqlite")
    node = acceptor(Chain(), ledger, executor)
    writer = node.writer
    assert writer.groups_commit
    channels = [channel(salt) for salt in range(1, 8)]
    served: dict[str, int] = {cid: 0 for _, cid in channels}
    alone: dict[str, str | None] = {cid: None for _, cid in channels}

    async def serve(config: ChannelConfig, channel_id: str, request_id: str,
                    cut: bool) -> bool:
        charged = ledger.channel(channel_id)
        base = 0 if charged is None else charged.charged
        try:
            auth = await node.authorize(pay_on(config, channel_id, base + MAX), WORST,
                                        request_id)
        except PaymentRequiredError as exc:  # busy, or a voucher on a stale total
            assert "busy" in exc.reason or "mismatch" in exc.reason, exc.reason
            return False
        assert alone[channel_id] is None, "two requests held one channel"
        alone[channel_id] = request_id
        await asyncio.sleep(0)  # other requests run meanwhile
        alone[channel_id] = None
        if cut:
            await writer.unsynced(lambda: node.progress(auth, 5, 16, 500))
            kept = await writer.unsynced(lambda: node.release(auth))
            assert kept is not None and kept.amount == 500
        else:
            receipt, _ = await writer.unsynced(lambda: node.charge(auth, 5, 2, 300))
            verify_receipt(receipt, NODE.address)  # raises if it does not hold up
        served[channel_id] += 1
        return True

    async def stream(config: ChannelConfig, channel_id: str) -> None:
        for i in range(10):
            assert await serve(config, channel_id, f"{channel_id[:10]}-{i}", cut=i % 4 == 3)

    async def crowd(config: ChannelConfig, channel_id: str) -> None:
        async def one(i: int) -> None:
            while not await serve(config, channel_id, f"crowd-{i}", cut=False):
                await asyncio.sleep(0)

        await asyncio.gather(*(one(i) for i in range(12)))

    try:
        await asyncio.gather(*(stream(c, cid) for c, cid in channels[:6]), crowd(*channels[6]))
        for _, channel_id in channels:
            record = ledger.channel(channel_id)
            receipts = ledger.receipts(channel_id)
            assert record is not None and record.pending_request is None
            assert len(receipts) == served[channel_id]
            assert record.charged == sum(r.amount for r in receipts)  # charged = receipted
            assert record.claimed <= record.charged
            for receipt in receipts:
                verify_receipt(receipt, NODE.address)
        assert served[channels[6][1]] == 12 and all(
            served[cid] == 10 for _, cid in channels[:6])
    finally:
        writer.close()
        ledger.close()
