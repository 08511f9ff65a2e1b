"""The gateway's side of a dispute: a node claimed a charge no receipt backs.

What it can claim is counted in the budget and the spend log (outcome
``disputed``), and the node gets a receipt disagreement with a long ban that
survives a gateway restart. (With real nodes on the dev chain:
tests/integration/test_gateway_disputes.py and tests/payments/test_payer_disputes.py.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.reputation import (
    AUDIT_BAN_CAP_S,
    DISPUTE_BAN_S,
    EventKind,
    NodeRecord,
    Reputation,
)
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.payments.pay.payer import Dispute


def test_a_dispute_is_spent_logged_and_banned_for_long_across_a_restart(
        tmp_path: Path) -> None:
    from eth_account import Account

    store = Reputation(tmp_path / "reputation.sqlite")
    spend = SpendLog(tmp_path / "spend.sqlite")
    budget = Budget(100_000, spent=1_000)
    payers = NodePayers("http://unused", Account.create(), tmp_path / "channels", 10_000)
    payers.count_in(budget, spend)
    cheat = NodeState("http://cheat/v1", reputation=store)
    dispute = Dispute("http://cheat", "0x" + "11" * 20, "0x" + "ab" * 32, claimed=40_000,
                      receipted=9_000, exposure=20_000)
    payers._disputed(cheat, dispute)

    assert budget.spent == 21_000 and budget.reserved == 0
    # one row, for the channel: no model, no tokens, no time, no receipt (none backs it)
    assert spend.rows() == [SpendRow("dispute-0x" + "ab" * 32, "", "http://cheat/v1", 0, 0,
                                     20_000, None, 0.0, "disputed")]
    assert spend.total() == 20_000  # a restarted gateway's budget starts from this
    assert cheat.banned(time.monotonic() + DISPUTE_BAN_S - 3_600)
    record = store.record("http://cheat/v1")
    assert (record.disputes, record.receipts) == (1, 1) and record.score < 0.01
    store.close()
    spend.close()

    again = Reputation(tmp_path / "reputation.sqlite")  # the gateway restarts
    fresh = NodeState("http://cheat/v1", reputation=again)
    ban = fresh.lasting_ban()
    assert fresh.banned() and ban is not None and "no receipt backs" in ban.reason
    assert ban.until == pytest.approx(time.time() + DISPUTE_BAN_S, abs=60)
    assert again.record("http://cheat/v1").disputes == 1
    again.close()


def test_dispute_bans_double_up_to_the_cap_and_outweigh_successes() -> None:
    now = time.time()
    one = NodeRecord("a", successes=100)
    one.apply(EventKind.DISPUTE, now)
    ban = one.ban()
    assert ban is not None and ban.until == pytest.approx(now + DISPUTE_BAN_S)
    assert one.score < NodeRecord("a", successes=100, receipts=1).score < 0.9
    many = NodeRecord("a")
    many.apply(EventKind.DISPUTE, now, count=5)
    ban = many.ban()
    assert ban is not None and ban.until == pytest.approx(now + AUDIT_BAN_CAP_S)


def test_a_receipt_adopted_from_a_corrective_402_is_spent_and_logged(tmp_path: Path) -> None:
    """An answer the gateway never saw (it crashed, or the final receipt came after the
    stream broke) is backed by the node's receipt in its corrective 402: counted too."""
    import json

    from eth_account import Account

    from agoranet.payments.receipts import Receipt, ReceiptSigner

    spend = SpendLog(tmp_path / "spend.sqlite")
    budget = Budget(None)
    payers = NodePayers("http://unused", Account.create(), tmp_path / "channels", 10_000)
    payers.count_in(budget, spend)
    node = NodeState("http://node/v1")
    receipt = ReceiptSigner(bytes(Account.create().key)).sign(
        Receipt("r1", "0x" + "ab" * 32, 3, 10, 23_000, 42_000, 31337))
    payers._resynced(node, receipt, 4_000)  # a running receipt of 19,000 was held already
    assert budget.spent == 4_000 == spend.total() and budget.reserved == 0
    (row,) = spend.rows()
    # what was added, with the receipt behind it; no model, tokens or time (never seen)
    assert row == SpendRow("r1", "", "http://node/v1", 0, 0, 4_000, None, 0.0, "resynced",
                           row.receipt)
    assert row.receipt is not None and Receipt.from_json(json.loads(row.receipt)) == receipt
    spend.close()


def test_payers_not_told_where_to_count_still_ban_and_do_not_fail(tmp_path: Path) -> None:
    """Without a budget and spend log (``count_in`` not called: a gateway without a budget),
    a dispute still bans the node and a resynced receipt breaks nothing."""
    from eth_account import Account

    from agoranet.payments.receipts import Receipt, ReceiptSigner

    payers = NodePayers("http://unused", Account.create(), tmp_path / "channels", 10_000)
    cheat = NodeState("http://cheat/v1")
    payers._disputed(cheat, Dispute("http://cheat", "0x" + "11" * 20, "0x" + "ab" * 32,
                                    claimed=40_000, receipted=9_000, exposure=20_000))
    assert cheat.banned() and any("no receipt backs" in e for e in cheat.events)
    receipt = ReceiptSigner(bytes(Account.create().key)).sign(
        Receipt("r1", "0x" + "ab" * 32, 3, 10, 23_000, 42_000, 31337))
    payers._resynced(NodeState("http://node/v1"), receipt, 4_000)
