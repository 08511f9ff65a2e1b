"""A chain RPC that accepts connections and never answers, under a real paid node.

The node (in process, behind real uvicorn, fake engine) reaches the dev chain
through a TCP proxy that the test freezes mid-way. Channels the node read
before keep being served from their cached state; channels it never saw get a
prompt 402 naming the chain; chain calls never take more than the node's few
chain worker threads, however many requests arrive. Every test is bounded in
time (the old node stalled each such request for about 52 s).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.chain.executor import THREAD_PREFIX
from agoranet.config import NodeSettings
from agoranet.errors import ChainError
from agoranet.node.app import create_app
from agoranet.node.payment_setup import NodePayments, build_payments
from agoranet.payments import x402wire
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.wallet import fund_dev

from .conftest import Env
from .frozen_rpc import FreezableProxy, freezable_proxy, silent_server
from .paid_support import (
    BODY,
    WORST,
    Channel,
    CountingEngine,
    header,
    open_test_channel,
    paid_settings,
    served,
)
from .support import channel_state, needs_anvil

pytestmark = [*needs_anvil, pytest.mark.timeout(90)]

TIMEOUT_S = 2.0  # the node's chain_timeout_s
WORKERS = 2  # the node's chain_workers
ALLOWANCE = 20_000
# A bound per request far below the ~52 s the old node took on a frozen RPC.
BOUND = httpx.Timeout(15.0, connect=5.0)


@pytest.fixture
def proxy(env: Env) -> Iterator[FreezableProxy]:
    with freezable_proxy(env.dev.rpc_url) as p:
        yield p


@pytest.fixture
def payments(proxy: FreezableProxy, env: Env, tmp_path: Path) -> Iterator[NodePayments]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[2])
    built = build_payments(_settings(proxy.url, tmp_path / "ledger.sqlite"), account)
    yield built
    built.close()


def _settings(rpc_url: str, ledger: Path) -> NodeSettings:
    # ttl 0: every request wants a fresh read, so every request meets the frozen RPC
    return paid_settings(rpc_url, ledger, chain_state_ttl=0.0, chain_timeout_s=TIMEOUT_S,
                         chain_workers=WORKERS, settle_interval=3600.0)


async def _pay(client: httpx.AsyncClient, channel: Channel, voucher: int, node: str,
               asset: str) -> httpx.Response:
    pay = header(channel, voucher, ALLOWANCE, node, asset)
    return await client.post("/v1/chat/completions", json=BODY,
                             headers={x402wire.PAYMENT_SIGNATURE: pay})


def _receipt(response: httpx.Response) -> Receipt:
    settle = x402wire.decode_json(response.headers[x402wire.PAYMENT_RESPONSE], "x")
    return Receipt.from_json(settle["extra"]["receipt"])


def _chain_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX))


def _payers(env: Env, count: int) -> list[LocalAccount]:
    accounts: list[LocalAccount] = [Account.create() for _ in range(count)]
    for a in accounts:
        fund_dev(env.w3, env.addresses, a.address, stablecoin=10_000_000, native=10**17)
    return accounts


async def test_frozen_rpc_known_channels_served_unknown_refused_threads_bounded(
        env: Env, proxy: FreezableProxy, payments: NodePayments, tmp_path: Path) -> None:
    node = payments.account.address
    asset = env.addresses.require_stablecoin()
    known = [open_test_channel(env, p, node, 1_000_000) for p in _payers(env, 3)]
    charged = dict.fromkeys((c.channel_id for c in known), 0)  # by the node's receipts
    engine = CountingEngine(delay=0.0, max_active=8, max_queue=64)
    app = create_app(engine, _settings(proxy.url, tmp_path / "ledger.sqlite"), None, payments)

    async def pay_in_turn(channel: Channel, times: int) -> None:
        for _ in range(times):
            response = await _pay(client, channel, charged[channel.channel_id] + ALLOWANCE,
                                  node, asset)
            assert response.status_code == 200, response.text
            receipt = _receipt(response)
            verify_receipt(receipt, node)
            assert receipt.amount == WORST
            charged[channel.channel_id] = receipt.cumulative

    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=BOUND) as client:
        await asyncio.gather(*(pay_in_turn(c, 1) for c in known))  # read while it answers
        proxy.freeze()
        threads_before = threading.active_count()

        # known channels: served from cached state, several at once, several times each
        await asyncio.gather(*(pay_in_turn(c, 3) for c in known))

        # channels the node never read (funded on chain, but the RPC is frozen): a prompt
        # 402 saying why, for a burst of them at once; the engine never runs for them
        late = [open_test_channel(env, p, node, 1_000_000) for p in _payers(env, 2)]
        unseen = late + [open_test_channel(env, Account.create(), node, 0) for _ in range(10)]
        calls = engine.calls
        refused = await asyncio.gather(*(_pay(client, c, ALLOWANCE, node, asset)
                                         for c in unseen))
        for response in refused:
            assert response.status_code == 402, response.text
            message = response.json()["error"]["message"]
            assert "on-chain state" in message and "RPC" in message, message
        assert engine.calls == calls

        # no pile-up: at most WORKERS threads ever waited on the chain
        assert _chain_threads() <= WORKERS
        assert threading.active_count() <= threads_before + WORKERS
        assert payments.acceptor.cache.executor.pending <= WORKERS

        # the chain answers again: the late channels become payable (within a few tries,
        # once the cache's back-off after the failures has passed)
        proxy.thaw()
        for channel in late:
            charged[channel.channel_id] = 0
            for _ in range(100):
                response = await _pay(client, channel, ALLOWANCE, node, asset)
                if response.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert response.status_code == 200, response.text
            charged[channel.channel_id] = _receipt(response).cumulative

        # money: the ledger charged exactly what the receipts say; claims stay within both
        await asyncio.to_thread(payments.settler.tick, force=True)
        for channel_id, receipted in charged.items():
            record = payments.ledger.channel(channel_id)
            assert record is not None
            assert record.charged == receipted
            assert record.claimed <= record.charged
            balance, claimed = channel_state(env.w3, env.addresses, channel_id)
            assert claimed == record.claimed <= balance
        assert sum(charged.values()) == WORST * (len(known) * 4 + 2)


async def test_withdrawal_during_an_outage_the_stale_voucher_is_still_claimed(
        env: Env, proxy: FreezableProxy, payments: NodePayments, payer: LocalAccount,
        tmp_path: Path) -> None:
    """The risk stale-while-error takes: the payer starts a withdrawal the frozen RPC
    hides. The voucher accepted meanwhile (within the cached balance) is still claimed
    in full, since a withdrawal waits its delay; back online, the channel is refused."""
    from agoranet.payments.channels import initiate_withdraw

    node = payments.account.address
    asset = env.addresses.require_stablecoin()
    channel = open_test_channel(env, payer, node, 1_000_000)
    app = create_app(CountingEngine(delay=0.0), _settings(proxy.url, tmp_path / "l.sqlite"),
                     None, payments)
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=BOUND) as client:
        first = await _pay(client, channel, ALLOWANCE, node, asset)
        assert first.status_code == 200, first.text
        proxy.freeze()
        initiate_withdraw(env.w3, env.addresses, payer, channel.config, 1_000_000)
        stale = await _pay(client, channel, _receipt(first).cumulative + ALLOWANCE, node, asset)
        assert stale.status_code == 200, stale.text  # served from the cached state
        cumulative = _receipt(stale).cumulative
        proxy.thaw()
        for _ in range(100):  # once the cache's short back-off has passed, it reads again
            refused = await _pay(client, channel, cumulative + ALLOWANCE, node, asset)
            if refused.status_code != 200:
                break
            cumulative = _receipt(refused).cumulative
            await asyncio.sleep(0.05)
        assert refused.status_code == 402
        assert "withdrawal" in refused.json()["error"]["message"]
        await asyncio.to_thread(payments.settler.tick, force=True)
        record = payments.ledger.channel(channel.channel_id)
        # every voucher taken on the stale state (until the back-off ended) was claimed
        assert record is not None and record.charged == cumulative >= 2 * WORST
        balance, claimed = channel_state(env.w3, env.addresses, channel.channel_id)
        assert claimed == record.claimed == record.charged <= balance


@pytest.mark.timeout(30)
def test_node_start_against_a_silent_rpc_fails_promptly(tmp_path: Path) -> None:
    """Nothing answers at the RPC URL: the node refuses to start with a clear error, in
    about one chain timeout (not web3's five retries)."""
    account: LocalAccount = Account.create()
    with silent_server() as silent, pytest.raises(ChainError, match="unreachable"):
        build_payments(_settings(silent.url, tmp_path / "ledger.sqlite"), account)
    assert silent.accepted >= 1


@pytest.mark.parametrize("scheme", ["batch-settlement", "exact"])
async def test_deposit_or_exact_payment_on_a_frozen_rpc_is_a_prompt_402(
        env: Env, proxy: FreezableProxy, payments: NodePayments, payer: LocalAccount,
        tmp_path: Path, scheme: str) -> None:
    """The SDK client's first payment (a deposit, or an EIP-3009 transfer) needs the node's
    chain: frozen, the node answers 402 naming the chain, no money moves, no engine runs."""
    from x402.http.clients import x402HttpxClient

    from .support import token_balance
    from .test_x402_client import sdk_client

    engine = CountingEngine(delay=0.0)
    app = create_app(engine, _settings(proxy.url, tmp_path / "ledger.sqlite"), None, payments)
    before = token_balance(env.w3, env.addresses, payer.address)
    async with served(app) as url:
        proxy.freeze()
        async with x402HttpxClient(sdk_client(env, payer, scheme), timeout=BOUND) as http:
            response = await http.post(f"{url}/v1/chat/completions", json=BODY)
        assert response.status_code == 402, response.text
        message = response.json()["error"]["message"]
        # ours names the chain RPC; the SDK's exact verifier reports its read timeout itself
        assert "chain RPC" in message or "timed out" in message, message
        assert engine.calls == 0
        assert token_balance(env.w3, env.addresses, payer.address) == before
        assert payments.ledger.earnings() == []
