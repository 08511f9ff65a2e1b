"""A payer that cannot pay says why, exactly, and signs nothing: no channel opened yet, a
channel in dispute (it pays that node no more), a deposit the next voucher would exceed with
no top-up set. Nothing is saved: the highest voucher and the payments on record stay as they
were. The payer's logic on its real store, without a node or a chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account

from agoranet.errors import CannotPayError, ChargeDisputeError, PaymentError
from agoranet.payments.pay.payer import ChannelState, Payer
from agoranet.payments.pay.payer_store import PayerStore

CID = "0x" + "ef" * 32


def _payer(tmp_path: Path, state: ChannelState | None) -> Payer:
    p = object.__new__(Payer)
    p.root, p._store, p.state = "http://node", PayerStore(tmp_path), state
    p.account, p.subkey, p.top_up_amount = Account.create(), None, 0
    if state is not None:
        p._save()
    return p


def test_no_channel_yet(tmp_path: Path) -> None:
    with pytest.raises(PaymentError) as refused:
        _payer(tmp_path, None).pay(1_000)
    assert str(refused.value) == "no channel: call open(deposit) first"
    assert PayerStore(tmp_path).load() is None


def test_a_disputed_channel_pays_no_more(tmp_path: Path) -> None:
    state = ChannelState(CID, {}, deposited=100_000, charged=9_000, voucher=29_000,
                         spent=29_000, disputed=20_000, dispute="the node claims 29000")
    p = _payer(tmp_path, state)
    with pytest.raises(ChargeDisputeError) as refused:
        p.pay(1_000, "r9")
    assert str(refused.value) == "this payer pays http://node no more: the node claims 29000"
    data = PayerStore(tmp_path).load()
    assert data is not None and (data["voucher"], data["payments"]) == (29_000, {})


def test_a_voucher_beyond_the_deposit_without_a_top_up(tmp_path: Path) -> None:
    state = ChannelState(CID, {}, deposited=10_000, charged=9_000, voucher=9_000, spent=9_000)
    p = _payer(tmp_path, state)
    with pytest.raises(CannotPayError) as refused:
        p.pay(1_001, "r9")
    assert str(refused.value) == ("the channel's deposit (10000) does not cover the next "
                                  "voucher (10001): top it up")
    data = PayerStore(tmp_path).load()
    assert data is not None and (data["voucher"], data["payments"]) == (9_000, {})
