"""The channels a payer opens follow the node's signed offer: its receiver authorizer (who
signs the node's claims, when it names one apart from its payee) and its withdraw delay,
both for the first channel (:meth:`Payer.open`) and for one that replaces a channel the
chain no longer backs (:meth:`Payer.reconcile`), whatever size the replacement's deposit
is (one base unit opens one too). A top-up adds at least what the next voucher lacks, and one
the wallet cannot fund is refused before anything is signed. The payment header accepts
the offer's terms, with the voucher signed. On the dev chain, the offer served in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

from agoranet.errors import CannotPayError
from agoranet.payments.channels import new_config, read_channel
from agoranet.payments.pay.payer import ChannelState, Payer
from agoranet.payments.vouchers import voucher_signer
from agoranet.payments.x402wire import decode_payment_payload

from .conftest import Env
from .offered_node import AUTHORIZER, DELAY, NODE, offered_node  # noqa: F401  (fixture)
from .support import needs_anvil

pytestmark = needs_anvil


def _follows_the_offer(p: Payer, env: Env) -> None:
    config = read_channel(env.w3, env.addresses, p.config).config
    assert (config.receiver, config.receiver_authorizer, config.withdraw_delay) == (
        NODE.address, AUTHORIZER.address, DELAY)
    assert p.config.receiver_authorizer == AUTHORIZER.address  # and so the store says


async def test_a_channel_names_the_offers_authorizer_and_delay(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(f"{offered}/v1", env.w3, env.addresses, account=payer, state_dir=tmp_path)
        p.open(50_000)
        _follows_the_offer(p, env)
        assert p.onchain() == (50_000, 0)
        p.close()

    await asyncio.to_thread(run)


async def test_a_replacement_channel_follows_the_offer_even_for_one_unit(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(offered, env.w3, env.addresses, account=payer, state_dir=tmp_path, top_up=1)
        # the store names a channel the chain never saw (a dev chain reset)
        config = new_config(env.addresses, payer=payer.address, receiver=NODE.address,
                            payer_authorizer=payer.address, withdraw_delay=DELAY)
        p.state = ChannelState(compute_channel_id(config, p.chain_id).lower(),
                               config.to_dict(), deposited=30_000)
        gone = p.state.channel_id
        done = p.reconcile()
        assert p.state.channel_id != gone and p.state.deposited == 1
        assert done == (f"channel {gone[:10]}… holds no deposit on chain (the chain was "
                        "reset, or the channel was never funded): retired (its 0 receipts "
                        f"and 0 spent stay on record) and channel {p.state.channel_id[:10]}"
                        "… opened with 1")
        _follows_the_offer(p, env)
        assert p.onchain() == (1, 0)
        assert Web3.to_checksum_address(p.state.config["receiverAuthorizer"]) == \
            AUTHORIZER.address
        p.close()

    await asyncio.to_thread(run)


async def test_a_top_up_adds_at_least_what_the_next_voucher_lacks(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(offered, env.w3, env.addresses, account=payer, state_dir=tmp_path,
                  top_up=5_000)
        p.open(10_000)
        p.pay(10_000, "fits")  # exactly the deposit: no top-up
        assert p.state is not None and (p.state.deposited, p.state.voucher) == (10_000, 10_000)
        p.pay(20_000, "lacks")  # lacks 10,000, more than the top-up: that much is added
        assert (p.state.deposited, p.state.voucher) == (20_000, 20_000)
        p.pay(21_000, "lacks-one")  # lacks 1: the top-up's 5,000 is added
        assert (p.state.deposited, p.state.voucher) == (25_000, 21_000)
        assert p.onchain() == (25_000, 0)
        p.close()

    await asyncio.to_thread(run)


async def test_a_top_up_the_wallet_cannot_fund_is_refused_and_nothing_is_signed(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(offered, env.w3, env.addresses, account=payer, state_dir=tmp_path,
                  top_up=2**120)  # more than any wallet on the dev chain holds
        p.open(10_000)
        with pytest.raises(CannotPayError) as refused:
            p.pay(20_000, "r1")
        why = str(refused.value)
        prefix = "the channel could not be topped up: "
        assert why.startswith(prefix) and why.removeprefix(prefix), why  # the chain's error
        assert p.state is not None
        assert (p.state.deposited, p.state.voucher, p.state.payments) == (10_000, 0, {})
        assert p.onchain() == (10_000, 0)
        p.close()

    await asyncio.to_thread(run)


async def test_a_top_up_of_one_unit_still_tops_up(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(offered, env.w3, env.addresses, account=payer, state_dir=tmp_path, top_up=1)
        p.open(10_000)
        p.pay(15_000, "r1")  # lacks 5,000: that much is added
        assert p.state is not None and (p.state.deposited, p.state.voucher) == (15_000, 15_000)
        assert p.onchain() == (15_000, 0)
        p.close()

    await asyncio.to_thread(run)


async def test_the_payment_header_accepts_the_offers_terms_with_the_signed_voucher(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(offered, env.w3, env.addresses, account=payer, state_dir=tmp_path)
        p.open(50_000)
        pending = p.pay(20_000, "r1")
        sent = decode_payment_payload(pending.header)
        assert sent.accepted.model_dump(by_alias=True, exclude_none=True) == {
            "scheme": "batch-settlement", "network": f"eip155:{env.dev.chain_id}",
            "asset": env.addresses.require_stablecoin(), "amount": "20000",
            "payTo": NODE.address, "maxTimeoutSeconds": 3600,  # as a node requires
            "extra": {"receiverAuthorizer": AUTHORIZER.address, "withdrawDelay": DELAY,
                      "name": "USD Coin", "version": "2"}}
        assert p.state is not None
        voucher = sent.payload["voucher"]
        assert sent.payload["type"] == "voucher"
        assert sent.payload["channelConfig"] == p.state.config
        assert (voucher["channelId"], voucher["maxClaimableAmount"]) == (
            p.state.channel_id, "20000")
        assert voucher_signer(p.state.channel_id, 20_000, voucher["signature"],
                              env.dev.chain_id) == payer.address
        p.close()

    await asyncio.to_thread(run)
