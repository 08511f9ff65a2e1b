"""A paid stream whose tokens do not all carry text (found by ``bench/fuzz.py``).

A token can decode to no text of its own (half of a multi-byte character, a special
token): with logprobs asked for, the node still sends its frame (the token and its
logprob, empty text) and counts it in its running receipts. The payer must count
that frame as a token that arrived, or it refuses the node's honest running receipt
("counts more tokens than have arrived") after the node has charged for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.engines.base import Delta, Finish, Prepared, StreamEvent, TokenLogprob
from agoranet.node.app import create_app
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer
from agoranet.payments.receipts import Receipt

from .conftest import Env
from .paid_support import CountingEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = needs_anvil


class _SilentTokensJob:
    """Three tokens: the first two decode to no text, the third to "é"."""

    def __init__(self, prepared: Prepared) -> None:
        self.prepared, self.sent = prepared, 0

    def step(self) -> list[StreamEvent]:
        self.sent += 1
        text = "\u00e9" if self.sent == 3 else ""
        token = TokenLogprob(token=text, logprob=-0.5, token_bytes=b"\xc3" if not text else b"")
        events: list[StreamEvent] = [Delta(text, (token,))]
        if self.sent == 3:
            events.append(Finish("length", self.prepared.prompt_tokens, 3))
        return events


class SilentTokensEngine(CountingEngine):
    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        return self.scheduler.run(_SilentTokensJob(prepared))


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"model": "fake", "prompt": "one two", "max_tokens": 3,
                         "logprobs": 1, "stream": True}),
    ("/v1/chat/completions", {"model": "fake", "max_tokens": 3, "logprobs": True,
                              "stream": True,
                              "messages": [{"role": "user", "content": "one two"}]}),
])
async def test_a_token_without_text_counts_as_arrived(env: Env, payer: LocalAccount,
                                                      tmp_path: Path, path: str,
                                                      body: dict[str, object]) -> None:
    node: LocalAccount = Account.from_key(env.dev.private_keys[7])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, node)
    app = create_app(SilentTokensEngine(max_active=2, max_queue=4),
                     paid_settings(env.dev.rpc_url, ledger, receipt_every=1), None, payments)

    def run(url: str) -> Receipt:
        paying = Payer(url, env.w3, env.addresses, account=payer, state_dir=tmp_path / "payer",
                       max_per_request=20_000)
        paying.open(100_000)
        try:
            payment = Payment()
            with httpx.Client(base_url=url, auth=PayerAuth(paying).paying(payment),
                              timeout=30) as http, \
                    http.stream("POST", path, json=body) as response:
                assert response.status_code == 200
                frames = [line for line in response.iter_lines() if line]
            assert frames[-1] == "data: [DONE]"
            assert any('"agoranet.receipt.running"' in f for f in frames)  # checked on arrival
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
