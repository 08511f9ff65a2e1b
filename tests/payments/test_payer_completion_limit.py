"""The payer bounds a receipt's tokens by the limit the node applies (found by ``bench/fuzz.py``).

A completion request has no ``max_completion_tokens`` (the node ignores it, and generates
up to ``max_tokens``), but the payer read it first: a list there raised TypeError after
the node had charged, and a number below ``max_tokens`` made an honest receipt "count
more tokens than max_tokens".
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.node.app import create_app
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer
from agoranet.payments.receipts import Receipt

from .conftest import Env
from .paid_support import ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = needs_anvil


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("odd", [1, [1], "1"])
async def test_a_completions_max_completion_tokens_is_not_its_limit(
        env: Env, payer: LocalAccount, tmp_path: Path, stream: bool, odd: object) -> None:
    node: LocalAccount = Account.from_key(env.dev.private_keys[7])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, node)
    app = create_app(ShortEngine(words=3, max_active=2, max_queue=4),
                     paid_settings(env.dev.rpc_url, ledger), None, payments)
    body = {"model": "fake", "prompt": "one two", "max_tokens": 3, "stream": stream,
            "max_completion_tokens": odd}

    def run(url: str) -> Receipt:
        paying = Payer(url, env.w3, env.addresses, account=payer, state_dir=tmp_path / "payer",
                       max_per_request=20_000)
        paying.open(100_000)
        try:
            payment = Payment()
            with httpx.Client(base_url=url, auth=PayerAuth(paying).paying(payment),
                              timeout=30) as http, \
                    http.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                response.read()
            receipt = payment.receipt
            assert receipt is not None
            assert paying.state is not None and paying.state.charged == receipt.amount
            return receipt
        finally:
            paying.close()

    async with served(app) as url:
        receipt = await asyncio.to_thread(run, url)
        channel = payments.ledger.channel(receipt.channel_id)
    assert receipt.tokens_out == 3
    assert channel is not None and channel.charged == receipt.amount
