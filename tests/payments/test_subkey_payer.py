"""A payer that holds only a sub-key (an agent's budget) pays a node from the sub-key's
channel: it starts from that channel and its deposit, signs with the sub-key, gets
receipts like any payer, and can neither fund nor withdraw the channel (the owner's
wallet does). Against a served in-process node on the dev chain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.errors import PaymentError
from agoranet.node.app import create_app
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer
from agoranet.payments.pay.subkeys import create_subkey

from .conftest import Env
from .money import assert_money_invariants, receipted
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


async def test_a_subkey_payer_pays_from_the_subkeys_channel(
        env: Env, node: tuple[str, str], payer: LocalAccount, tmp_path: Path) -> None:
    url, address = node
    subkey, _ = create_subkey(env.w3, env.addresses, payer, receiver=address, deposit=DEPOSIT,
                              receiver_authorizer=address,
                              withdraw_delay=paid_settings("", tmp_path).withdraw_delay)

    def run() -> Payer:
        with pytest.raises(PaymentError,
                           match=r"^a payer needs exactly one of a wallet account or a sub-key$"):
            Payer(url + "/v1/", env.w3, env.addresses, account=payer, subkey=subkey,
                  state_dir=tmp_path / "both")
        p = Payer(url + "/v1/", env.w3, env.addresses, subkey=subkey,
                  state_dir=tmp_path / "agent", max_per_request=HEADROOM)
        assert p.root == url
        assert p.state is not None
        assert (p.state.channel_id, p.state.deposited, p.state.charged) == (
            subkey.channel_id.lower(), DEPOSIT, 0)
        assert p.state.config == subkey.config.to_dict()
        auth = PayerAuth(p)
        with httpx.Client(base_url=url, auth=auth, timeout=30) as http:
            for _ in range(2):
                payment = Payment()
                response = http.post("/v1/chat/completions", json=BODY,
                                     auth=auth.paying(payment))
                assert response.status_code == 200, response.text
                receipt = payment.receipt
                assert receipt is not None
                assert receipt.channel_id == subkey.channel_id.lower()
        with pytest.raises(PaymentError,
                           match=r"^a sub-key's channel is funded by its owner's wallet$"):
            p.open(1_000)
        with pytest.raises(PaymentError,
                           match=r"^only the wallet that funded the channel can withdraw$"):
            p.withdraw()
        return p

    p = await asyncio.to_thread(run)
    assert p.state is not None and p.state.charged == receipted(p) > 0
    assert p.state.deposited == DEPOSIT  # nothing was added by the agent
    again = await asyncio.to_thread(Payer, url, env.w3, env.addresses, subkey=subkey,
                                    state_dir=tmp_path / "agent")
    assert again.state == p.state  # a restart picks the saved channel up, not a fresh one
    assert_money_invariants(p, HEADROOM)
    p.close()
    again.close()
