"""The gateway's tool payer: a seller's receipt for one call is checked before it counts.

A :class:`~agoranet.gateway.tool_payer.ToolPayer` over a channel state set by hand (no
chain: nothing here opens, tops up or claims), the seller's receipts signed with its real
key. A receipt is believed only when it is signed by the offer's payee, for this
request (the request id sent), channel and chain, charges exactly the call's price (no more than the voucher allows),
agrees with ``chargedAmount`` and is in step with what was charged before; any other
is refused (and the call's payment marked refused, so no corrective 402 can later
bring that receipt back). An offer the payer cannot pay (no payment, no
batch-settlement, another token) is refused before any channel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from agoranet.chain.addresses import ChainAddresses
from agoranet.errors import PaymentError, ReceiptError
from agoranet.gateway.tool_payer import ToolPayer
from agoranet.payments.pay.payer_store import ChannelState
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.registry.offer import PaymentOffer
from agoranet.registry.tool_offer import ToolOffer, build_tool_offer

SELLER = Account.create()
STABLECOIN = "0x" + "11" * 20
CHANNEL = "0x" + "ab" * 32
CHAIN_ID = 31337
ADDRESSES = ChainAddresses(CHAIN_ID, STABLECOIN, "0x" + "33" * 20, "0x" + "44" * 20, None,
                           "USD Coin", "2")
ECHO = {"name": "echo", "description": "", "input_schema": {"type": "object"}, "price": 1000}


def _offer(**payment: Any) -> ToolOffer:
    terms = {"schemes": ["batch-settlement", "exact"], "network": f"eip155:{CHAIN_ID}",
             "asset": STABLECOIN, "pay_to": SELLER.address,
             "receiver_authorizer": "0x" + "22" * 20, "withdraw_delay": 900,
             "min_deposit": 0, "token_name": "USD Coin", "token_version": "2", **payment}
    return build_tool_offer("http://seller.test", [ECHO], PaymentOffer(**terms))


def _payer(tmp_path: Path, charged: int = 5_000) -> ToolPayer:
    payer = ToolPayer(_offer(), Web3(), ADDRESSES, account=Account.create(),
                      state_dir=tmp_path / "payer")
    payer.state = ChannelState(CHANNEL, {}, deposited=100_000, charged=charged,
                               voucher=charged)
    return payer


def _response(amount: int, cumulative: int, *, signer: Any = SELLER, channel: str = CHANNEL,
              chain_id: int = CHAIN_ID, charged: int | None = None,
              request_id: str = "call-1") -> dict[str, Any]:
    receipt = ReceiptSigner(bytes(signer.key)).sign(
        Receipt(request_id, channel, 1, 0, amount, cumulative, chain_id))
    return {"extra": {"receipt": receipt.to_json(),
                      "chargedAmount": str(amount if charged is None else charged)}}


def test_a_receipt_in_step_for_the_price_is_believed(tmp_path: Path) -> None:
    payer = _payer(tmp_path)
    pending = payer.pay(1000, "call-1")
    receipt = payer.check_call(pending, _response(1000, 6000), 1000)
    payer.adopt(pending, receipt)
    assert payer.state is not None
    assert (payer.state.charged, payer.state.spent, payer.state.receipts) == (6000, 1000, 1)
    assert [r.amount for r in payer.receipts()] == [1000]
    assert "call-1" not in payer.state.payments
    # the next call starts from what the receipt said
    assert payer.pay(1000, "call-2").voucher == 7000
    payer.close()


@pytest.mark.parametrize("case", ["other_signer", "more_than_price", "less_than_price",
                                  "above_voucher", "other_channel", "other_chain",
                                  "charged_disagrees", "cumulative_behind",
                                  "cumulative_ahead", "replayed", "no_receipt",
                                  "other_request"])
def test_a_wrong_receipt_is_refused(case: str, tmp_path: Path) -> None:
    payer = _payer(tmp_path)
    pending = payer.pay(1000, "call-1")
    response = {
        "other_signer": lambda: _response(1000, 6000, signer=Account.create()),
        "more_than_price": lambda: _response(1001, 6001),
        "less_than_price": lambda: _response(999, 5999),
        "above_voucher": lambda: _response(1000, 6000),  # checked with price 2000 below
        "other_channel": lambda: _response(1000, 6000, channel="0x" + "cd" * 32),
        "other_chain": lambda: _response(1000, 6000, chain_id=1),
        "charged_disagrees": lambda: _response(1000, 6000, charged=999),
        "cumulative_behind": lambda: _response(1000, 5999),
        "cumulative_ahead": lambda: _response(1000, 6001),
        "replayed": lambda: _response(1000, 5000),  # an older call's receipt
        "no_receipt": lambda: {"extra": {}},
        # in step and for the price, but naming another call (the seller's own name)
        "other_request": lambda: _response(1000, 6000, request_id="seller-own-id"),
    }[case]()
    price = 2000 if case == "above_voucher" else 1000
    if case == "above_voucher":
        response = _response(2000, 7000)
    with pytest.raises(ReceiptError):
        payer.check_call(pending, response, price)
    assert payer.state is not None and payer.state.charged == 5000  # nothing believed
    if case != "no_receipt":
        assert payer.state.payments["call-1"][3:] == [1]  # refused for good
    payer.close()


@pytest.mark.parametrize("terms", [{"schemes": ["exact"]}, {"asset": "0x" + "99" * 20}])
def test_an_offer_it_cannot_pay_is_refused(terms: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(PaymentError):
        ToolPayer(_offer(**terms), Web3(), ADDRESSES, account=Account.create(),
                  state_dir=tmp_path / "payer")


def test_a_free_offer_has_no_payer(tmp_path: Path) -> None:
    free = build_tool_offer("http://seller.test", [{**ECHO, "price": 0}])
    with pytest.raises(PaymentError, match="does not sell for payment"):
        ToolPayer(free, Web3(), ADDRESSES, account=Account.create(),
                  state_dir=tmp_path / "payer")
