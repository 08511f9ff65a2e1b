"""A channel the chain no longer backs whose replacement cannot be opened (the wallet cannot
fund the deposit) is refused with why -- the channel, what the chain says, and the chain's
error -- and nothing changes: the payer keeps its channel, its receipts and its spend, and
retires nothing. Against a served in-process node on the dev chain, the channel withdrawn
for real."""

from __future__ import annotations

import asyncio
import re
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

from .conftest import Env
from .money import assert_money_invariants
from .paid_support import ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = needs_anvil

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6}
HEADROOM = 20_000
TOO_MUCH = 2**120  # more than any wallet on the dev chain holds (a uint128 still)


@pytest.fixture
async def node(env: Env, tmp_path: Path) -> AsyncIterator[str]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[8])
    ledger = tmp_path / "ledger.sqlite"
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger), None,
                     node_payments(env.dev.rpc_url, ledger, account))
    async with served(app) as url:
        yield url


async def test_a_replacement_channel_that_cannot_be_opened_is_refused_with_why(
        env: Env, node: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> Payer:
        p = Payer(node, env.w3, env.addresses, account=payer, state_dir=tmp_path / "payer",
                  max_per_request=HEADROOM)
        p.open(100_000)
        with httpx.Client(base_url=node, auth=PayerAuth(p), timeout=30) as http:
            assert http.post("/v1/chat/completions", json=BODY).status_code == 200
        assert p.state is not None
        before = (p.state.channel_id, p.state.charged, p.state.spent, p.state.receipts)
        assert p.withdraw().state == "pending"  # the channel takes no new vouchers now
        p.top_up_amount = TOO_MUCH
        with pytest.raises(CannotPayError, match=re.escape(
                f"channel {before[0][:10]}… has a withdrawal under way: it takes no new "
                "vouchers; a new one could not be opened: ")) as refused:
            p.reconcile()
        assert str(refused.value).split("could not be opened: ", 1)[1]  # the chain's error
        assert (p.state.channel_id, p.state.charged, p.state.spent, p.state.receipts) == before
        assert p.retired() == []
        return p

    p = await asyncio.to_thread(run)
    assert_money_invariants(p, HEADROOM)
    p.close()
