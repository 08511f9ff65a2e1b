"""A sub-key's channel the chain no longer backs is not repaired by the payer: the sub-key
cannot fund a new channel (its owner's wallet does), so :meth:`Payer.reconcile` refuses
with why (CannotPayError, naming the channel and what the chain says), opens nothing,
retires nothing, and the sub-key's receipts and spend stay as they were. Against
a served in-process node on the dev chain, the owner withdrawing the channel for real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.errors import CannotPayError
from agoranet.node.app import create_app
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer import Payer
from agoranet.payments.pay.subkeys import create_subkey, revoke

from .conftest import Env
from .money import assert_money_invariants
from .paid_support import ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = needs_anvil

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6}
DEPOSIT, HEADROOM = 200_000, 20_000


@pytest.fixture
async def node(env: Env, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[8])
    ledger = tmp_path / "ledger.sqlite"
    settings = paid_settings(env.dev.rpc_url, ledger)
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16), settings, None,
                     node_payments(env.dev.rpc_url, ledger, account))
    async with served(app) as url:
        yield url, account.address


async def test_a_withdrawn_subkey_channel_is_refused_not_replaced(
        env: Env, node: tuple[str, str], payer: LocalAccount, tmp_path: Path) -> None:
    url, address = node
    subkey, _ = create_subkey(env.w3, env.addresses, payer, receiver=address, deposit=DEPOSIT,
                              receiver_authorizer=address,
                              withdraw_delay=paid_settings("", tmp_path).withdraw_delay)
    cid = subkey.channel_id.lower()
    refusal = (f"^channel {cid[:10]}… has a withdrawal under way: it takes no new vouchers; "
               "a sub-key's channel is funded by its owner: ask for a new sub-key$")

    def run() -> Payer:
        p = Payer(url, env.w3, env.addresses, subkey=subkey, state_dir=tmp_path / "agent",
                  max_per_request=HEADROOM, top_up=50_000)  # a top-up a sub-key cannot use
        with httpx.Client(base_url=url, auth=PayerAuth(p), timeout=30) as http:
            assert http.post("/v1/chat/completions", json=BODY).status_code == 200
            assert p.reconcile() is None  # chain and store agree
            assert p.state is not None
            before = (p.state.charged, p.state.spent, p.state.receipts, p.state.deposited)
            assert revoke(env.w3, env.addresses, payer, subkey.config).state == "pending"
            with pytest.raises(CannotPayError, match=refusal):
                p.reconcile()
        assert p.state.channel_id == cid and p.retired() == []  # nothing opened or retired
        assert (p.state.charged, p.state.spent, p.state.receipts, p.state.deposited) == before
        return p

    p = await asyncio.to_thread(run)
    assert_money_invariants(p, HEADROOM)
    p.close()
