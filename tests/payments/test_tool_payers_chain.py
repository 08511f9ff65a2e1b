"""The gateway's tool payers on the real dev chain, in process: a seller's channels.

:class:`ToolPayers` reads our chain's token once, opens a seller's channel with the
deposit on first use (its state in a folder named for the seller), reuses it for the
next call, opens a second channel (its own folder, deposit and id) only for a call made
while the first is paying one, makes a call beyond ``channels`` wait for one handed back,
and on a new offer from the same seller keeps the channel (checked on chain) under the
new terms. Its chain reads are one short
try each (they run on a call's path). Disputes and resynced receipts
are wired to the payer (their accounting: tests/gateway/test_tool_payer_accounting.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from agoranet.gateway.budget import Budget
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_directory import ToolSeller
from agoranet.gateway.tool_payer import ToolPayers
from agoranet.registry.offer import PaymentOffer
from agoranet.registry.tool_offer import ToolOffer, build_tool_offer

from .conftest import Env

pytestmark = pytest.mark.timeout(60)

DEPOSIT = 50_000


def _offer(env: Env, receiver: LocalAccount, price: int, root: str) -> ToolOffer:
    terms = PaymentOffer(
        schemes=["batch-settlement", "exact"], network=f"eip155:{env.addresses.chain_id}",
        asset=env.addresses.require_stablecoin(), pay_to=receiver.address,
        receiver_authorizer=receiver.address, withdraw_delay=900, min_deposit=0,
        token_name=env.addresses.token_name or "USD Coin",
        token_version=env.addresses.token_version or "2")
    echo = {"name": "echo", "description": "", "input_schema": {"type": "object"},
            "price": price}
    return build_tool_offer(root, [echo], terms)


async def test_a_seller_s_channels_opened_as_calls_need_them_and_kept_across_offers(
        env: Env, payer: LocalAccount, receiver: LocalAccount, tmp_path: Path) -> None:
    spend = SpendLog(tmp_path / "spend.sqlite")
    payers = ToolPayers(env.dev.rpc_url, payer, tmp_path / "channels", DEPOSIT, Budget(None),
                        spend, chain_timeout_s=5.0, channels=2)
    assert await payers.stablecoin() == env.addresses.require_stablecoin()
    seller = ToolSeller("http://seller.test", _offer(env, receiver, 1000, "http://seller.test"))

    first = await payers.take(seller)
    assert first.state is not None and first.state.deposited == DEPOSIT
    assert first.top_up_amount == DEPOSIT and first.tool_offer == seller.offer
    assert first.chain_id == env.addresses.chain_id
    # on a request path: one short try of each chain read (our time limit, no retries)
    provider = first.w3.provider
    assert provider.get_request_kwargs()["timeout"] == 5.0  # type: ignore[attr-defined]
    assert provider.exception_retry_configuration is None  # type: ignore[attr-defined]
    name = hashlib.sha256(b"http://seller.test").hexdigest()[:16]
    folder = tmp_path / "channels" / name
    assert first.state_dir == folder and folder.is_dir()
    assert first.on_dispute is not None and first.on_resync is not None
    assert first.on_dispute.args == (seller,) and first.on_resync.args == (seller,)
    pending = first.pay(1000, "call-1")  # it pays from the channel opened
    assert pending.voucher == 1000 and pending.max_amount == 1000
    payers.give_back(seller, first)
    assert await payers.take(seller) is first  # idle again: the same channel, no new one

    second = await payers.take(seller)  # the first is still paying a call: a second one
    assert second is not first and second.state is not None
    assert second.state_dir == tmp_path / "channels" / f"{name}-1"
    assert second.state.channel_id != first.state.channel_id
    assert second.state.deposited == DEPOSIT
    assert sorted(p.state_dir.name for p in payers.payers()) == [name, f"{name}-1"]

    third = asyncio.ensure_future(payers.take(seller))  # two channels at most: it waits
    await asyncio.sleep(0.05)
    assert not third.done()
    payers.give_back(seller, second)
    assert await asyncio.wait_for(third, 5) is second
    payers.give_back(seller, second)
    payers.give_back(seller, first)

    seller.offer = _offer(env, receiver, 2000, "http://seller.test")  # a new price
    renewed = await payers.take(seller)
    assert renewed not in (first, second) and renewed.tool_offer == seller.offer
    assert renewed.state is not None
    assert renewed.state.channel_id == first.state.channel_id  # the same channel, checked
    assert renewed.state.deposited == DEPOSIT
    assert len(payers.payers()) == 2 and renewed in payers.payers()
    payers.close()
    spend.close()
