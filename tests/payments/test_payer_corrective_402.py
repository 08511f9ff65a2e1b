"""The payer's answer to a node's corrective 402, rule by rule (see ``payer.py``'s docstring):
a 402 that is not about this channel changes nothing; a total at or below the payer's is
believed; a higher one is believed only when the node's receipt in the 402 backs it exactly
(this channel, this chain, a request the payer paid, within its maximum and not below a
running receipt held), and is otherwise a dispute that counts every unit the node can
still claim. The payer's own logic, on its real store, without a node or a chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agoranet.errors import ChargeDisputeError
from agoranet.payments.pay.payer import ChannelState, Dispute, Payer
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner

CID = "0x" + "cd" * 32
NODE = ReceiptSigner(bytes(Account.create().key))
CHARGED, VOUCHER = 13_000, 33_000  # the payer's receipts back 13,000; it signed 33,000


class Told:
    def __init__(self) -> None:
        self.disputes: list[Dispute] = []
        self.resyncs: list[tuple[Receipt, int]] = []


def _payer(tmp_path: Path, **state: Any) -> tuple[Payer, Told]:
    p = object.__new__(Payer)
    p.root, p.node, p.chain_id, p._store = "http://node", NODE.address, 31337, PayerStore(tmp_path)
    told = Told()
    p.on_dispute = told.disputes.append
    p.on_resync = lambda receipt, counted: told.resyncs.append((receipt, counted))
    fields: dict[str, Any] = {"deposited": 1_000_000, "charged": CHARGED, "voucher": VOUCHER,
                              "spent": CHARGED,
                              # r1: paid with maximum 20,000 after 13,000; r0: an older one
                              "payments": {"r0": [5_000, 8_000, 0, 0],
                                           "r1": [20_000, CHARGED, 0, 0]}}
    fields.update(state)
    p.state = ChannelState(CID, {}, **fields)
    return p, told


def _corrective(charged: int | str, receipt: Receipt | None = None,
                channel: str = CID) -> dict[str, Any]:
    body: dict[str, Any] = {"channelState": {"channelId": channel,
                                             "chargedCumulativeAmount": str(charged)}}
    if receipt is not None:
        body["receipt"] = receipt.to_json()
    return body


def _receipt(amount: int, *, request: str = "r1", chain: int = 31337,
             before: int = CHARGED) -> Receipt:
    return NODE.sign(Receipt(request, CID, 3, 3, amount, before + amount, chain))


@pytest.mark.parametrize(
    "corrective",
    [{}, {"channelState": "x"}, {"channelState": None}, {"channelState": {}},
     _corrective(90_000, channel="0x" + "ef" * 32), _corrective("many"), _corrective(-1),
     {"channelState": {"channelId": CID}}],
)  # fmt: skip
def test_a_402_that_is_not_a_readable_statement_about_this_channel_changes_nothing(
        tmp_path: Path, corrective: dict[str, Any]) -> None:
    p, told = _payer(tmp_path)
    assert p.resync(corrective) is False
    assert p.state is not None and (p.state.charged, p.state.spent, p.state.disputed) == (
        CHARGED, CHARGED, 0)
    assert p.state.dispute == "" and told.disputes == [] and told.resyncs == []


@pytest.mark.parametrize("charged", [CHARGED, 12_000, 0])
def test_a_total_at_or_below_the_payers_is_believed_and_costs_nothing(
        tmp_path: Path, charged: int) -> None:
    p, told = _payer(tmp_path)
    assert p.resync(_corrective(charged)) is True
    assert p.state is not None and p.state.charged == charged
    assert p.state.spent == CHARGED and p.state.disputed == 0 and p.state.dispute == ""
    assert told.disputes == [] and told.resyncs == []  # and the channel goes on paying


@pytest.mark.parametrize("amount", [20_000, 1])
def test_a_higher_total_backed_by_the_nodes_receipt_is_adopted_and_counted(
        tmp_path: Path, amount: int) -> None:
    p, told = _payer(tmp_path, receipts=4)
    receipt = _receipt(amount)
    assert p.resync(_corrective(CHARGED + amount, receipt)) is True
    assert p.state is not None
    assert (p.state.charged, p.state.receipts) == (CHARGED + amount, 5)
    assert p.state.spent == CHARGED + amount >= p.state.charged  # spend covers the receipts
    assert "r1" not in p.state.payments and "r0" in p.state.payments
    assert told.resyncs == [(receipt, amount)] and told.disputes == []
    assert p.receipts() == [receipt]


def test_a_final_receipt_equal_to_the_running_one_held_backs_the_total(tmp_path: Path) -> None:
    """The stream broke after a running receipt for 7,000 (adopted), and the node's final
    receipt charges the same 7,000: the node's total is the payer's."""
    p, told = _payer(tmp_path, charged=CHARGED + 7_000, spent=CHARGED + 7_000,
                     payments={"r1": [20_000, CHARGED, 7_000, 0]})
    final = _receipt(7_000)
    # the node's total equals the payer's: believed without the receipt
    assert p.resync(_corrective(CHARGED + 7_000, final)) is True
    # a final receipt above the running one, within the maximum
    p, told = _payer(tmp_path / "b", charged=CHARGED + 7_000, spent=CHARGED + 7_000,
                     payments={"r1": [20_000, CHARGED, 7_000, 0]})
    assert p.resync(_corrective(CHARGED + 9_000, _receipt(9_000))) is True
    assert p.state is not None and (p.state.charged, p.state.spent) == (CHARGED + 9_000,) * 2
    assert told.resyncs[0][1] == 2_000  # only what the running receipt had not counted


@pytest.mark.parametrize(
    ("receipt", "why"),
    [(None, "no receipt"),
     (_receipt(20_001), "above the request's maximum"),
     (_receipt(9_000, chain=1), "for another chain"),
     (_receipt(9_000, request="r9"), "for a request never paid"),
     (_receipt(9_000, before=CHARGED + 1), "out of step"),
     (ReceiptSigner(bytes(Account.create().key)).sign(
         Receipt("r1", CID, 3, 3, 9_000, CHARGED + 9_000, 31337)), "signed by someone else")],
)  # fmt: skip
def test_a_higher_total_nothing_backs_is_a_dispute_that_counts_every_claimable_unit(
        tmp_path: Path, receipt: Receipt | None, why: str) -> None:
    p, told = _payer(tmp_path, disputed=500, spent=CHARGED + 500)
    claimed = CHARGED + (receipt.amount if receipt is not None else 9_000)
    with pytest.raises(ChargeDisputeError, match="claims a charged total no receipt backs"):
        p.resync(_corrective(claimed, receipt))
    assert p.state is not None
    exposure = VOUCHER - CHARGED
    assert p.state.charged == CHARGED, why  # the node's figure is not believed
    assert (p.state.disputed, p.state.spent) == (500 + exposure, CHARGED + 500 + exposure)
    assert p.state.spent >= p.state.voucher  # every unit the node can claim is counted
    assert told.resyncs == []
    [dispute] = told.disputes
    assert dispute == Dispute("http://node", NODE.address, CID, claimed, CHARGED, exposure)
    assert p.state.dispute == dispute.describe()
    assert dispute.describe().startswith(
        f"the node claims {claimed} charged on channel {CID[:10]}… but the receipts held "
        f"back {CHARGED}: {exposure} counted as disputed spend")
    with pytest.raises(ChargeDisputeError):
        p.pay(1_000)  # and the channel pays that node no more


def test_a_dispute_after_every_voucher_was_receipted_counts_nothing_more(
        tmp_path: Path) -> None:
    p, told = _payer(tmp_path, voucher=CHARGED)
    with pytest.raises(ChargeDisputeError):
        p.resync(_corrective(CHARGED + 5_000))
    assert p.state is not None and (p.state.disputed, p.state.spent) == (0, CHARGED)
    assert told.disputes[0].exposure == 0


def test_a_receipt_once_refused_never_backs_a_total_later(tmp_path: Path) -> None:
    p, told = _payer(tmp_path)
    p._refuse("r1")
    assert p.state is not None and p.state.payments["r1"][3:] == [1]
    with pytest.raises(ChargeDisputeError):
        p.resync(_corrective(CHARGED + 9_000, _receipt(9_000)))
    assert told.resyncs == []
