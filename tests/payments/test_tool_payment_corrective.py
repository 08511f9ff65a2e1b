"""A paid tool call through the node's real :class:`PaymentAcceptor`: a stale voucher's
corrective 402 names the tool and the channel's charged total.

The acceptor on a fake chain with a real SQLite ledger and real receipt signatures
(acceptor_support); the tool's own payment checks are in tests/tools/.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agoranet.chain.executor import ChainExecutor
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.tools import ToolServer
from agoranet.tools.payments import ToolPayments
from agoranet.tools.service import Answer, ToolService, Unpaid

from . import acceptor_support as real

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def node_acceptor() -> Iterator[tuple[ToolPayments, SqliteLedger]]:
    executor = ChainExecutor(workers=1, timeout=1.0)
    ledger = SqliteLedger(":memory:")
    payments = ToolPayments(real.acceptor(real.Chain(), ledger, executor))
    yield payments, ledger
    ledger.close()
    executor.close()


async def test_a_stale_voucher_gets_the_corrective_402_of_the_node(
        node_acceptor: tuple[ToolPayments, SqliteLedger]) -> None:
    """With the node's real acceptor: a voucher replayed after its call was charged no
    longer adds up, and the tool's 402 carries the channel's charged total to sign over."""
    payments, ledger = node_acceptor
    server = ToolServer("real")

    @server.tool(price=5000)
    def echo(text: str) -> str:
        return text

    service = ToolService(server, payments)
    voucher = real.pay(5000, 5000)
    paid = await service.call("echo", {"text": "x"}, voucher, "mcp://tool/echo", "r1")
    assert isinstance(paid, Answer) and paid.price == 5000
    replayed = await service.call("echo", {"text": "x"}, voucher, "mcp://tool/echo", "r2")
    assert isinstance(replayed, Unpaid)
    assert replayed.error.corrective is not None
    batch = next(a for a in replayed.required.accepts if a.scheme == real.BATCH)
    assert batch.extra["tool"] == "echo"
    assert batch.extra["channelState"] == replayed.error.corrective["channelState"]
    assert batch.extra["channelState"]["chargedCumulativeAmount"] == "5000"
    record = ledger.channel(real.CID)
    assert record is not None and record.charged == 5000  # the replay charged nothing
    assert record.charged == sum(r.amount for r in ledger.receipts(real.CID))
    assert record.charged <= record.voucher_amount and record.pending_request is None
    # the requirements of a call no payment was refused for yet carry no error
    fresh = payments.payment_required("echo", "", 5000, "mcp://tool/echo")
    assert fresh.error is None
    assert all("channelState" not in a.extra for a in fresh.accepts)
