"""A paid stream's receipt is found however the network cuts the stream into pieces.

TCP and proxies split and merge a stream's bytes as they like: an event may arrive in
several pieces, or many events in one. The payer (:class:`~agoranet.payments.pay.httpx_auth.
PayerAuth`) must still count every token and find the node's final receipt, and a line
that is not JSON (a keep-alive comment, even one with bytes that are not UTF-8, or a
broken event) must not stop it. Against a served in-process node on the dev chain, behind a proxy that re-cuts
its answer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoranet.node.app import create_app
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer
from agoranet.payments.receipts import Receipt

from .conftest import Env
from .money import assert_money_invariants, receipted
from .paid_support import ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = needs_anvil

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6, "stream": True}  # 3 tokens: 3*1000 + 3*2000 = 9,000
HEADROOM = 20_000
# an SSE comment that is not UTF-8, and an event that is not JSON
KEEP_ALIVE = b": keep-alive \xff\xfe\n\ndata: {not json\n\n"


class Recut:
    """Holds a streamed answer's body, then sends it re-cut: after a keep-alive comment,
    either all of it in one piece or in pieces of ``size`` bytes (events split apart)."""

    def __init__(self, app: ASGIApp, size: int | None) -> None:
        self.app, self.size = app, size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, stream = b"", False

        async def recutting(message: Message) -> None:
            nonlocal body, stream
            if message["type"] == "http.response.start":
                stream = b"text/event-stream" in dict(message["headers"]).get(
                    b"content-type", b"")
            if message["type"] != "http.response.body" or not stream:
                await send(message)
                return
            body += message.get("body", b"")
            if message.get("more_body"):
                return
            data = KEEP_ALIVE + body
            size = self.size or len(data)
            pieces = [data[i:i + size] for i in range(0, len(data), size)]
            for i, piece in enumerate(pieces):
                await send({"type": "http.response.body", "body": piece,
                            "more_body": i + 1 < len(pieces)})

        await self.app(scope, receive, recutting if scope["type"] == "http" else send)


@pytest.mark.parametrize("size", [None, 7], ids=["all-in-one-piece", "seven-byte-pieces"])
async def test_the_receipt_is_found_however_the_stream_is_cut(
        size: int | None, env: Env, payer: LocalAccount, tmp_path: Path) -> None:
    account: LocalAccount = Account.from_key(env.dev.private_keys[7])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account)
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger), None, payments)
    async with served(Recut(app, size)) as url:  # type: ignore[arg-type]
        def run() -> tuple[Payer, list[Receipt], list[bytes]]:
            p = Payer(url, env.w3, env.addresses, account=payer, state_dir=tmp_path / "p",
                      max_per_request=HEADROOM)
            p.open(200_000)
            receipts, pieces = [], []
            auth = PayerAuth(p)
            with httpx.Client(base_url=url, auth=auth, timeout=30) as http:
                for _ in range(2):  # the second is paid only if the first was settled
                    payment = Payment()
                    with http.stream("POST", "/v1/chat/completions", json=BODY,
                                     auth=auth.paying(payment)) as answer:
                        assert answer.status_code == 200
                        pieces = list(answer.iter_raw())
                    receipts.append(payment.receipt)
            return p, receipts, pieces

        p, receipts, pieces = await asyncio.to_thread(run)
        await asyncio.to_thread(payments.settler.tick, force=True)
    assert len(pieces) == 1 if size is None else len(pieces) > 10
    assert [(r.tokens_out, r.amount) for r in receipts] == [(3, 9_000)] * 2
    assert p.state is not None and p.state.charged == receipts[-1].cumulative == 18_000
    assert p.state.charged == receipted(p) == p.state.spent
    claimed, _ = assert_money_invariants(p, HEADROOM)
    assert claimed == 18_000
    p.close()
