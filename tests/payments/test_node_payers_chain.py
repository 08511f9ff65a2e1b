"""The gateway's payers (:class:`~agoranet.gateway.paying.NodePayers`) and the chain: every
JSON-RPC call is one short try (the gateway's chain timeout, none of web3's retries); a
saved channel is still used when the chain cannot be read at a restart (the node checks
each voucher anyway), and it is not held against the node; a fine-tuning job's channel
lives in the folder it is given and is closed with the others; channels of different
nodes open side by side, one slow opening does not hold up another.
"""

from __future__ import annotations

import asyncio
import json
import threading
import types
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider

from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.node.app import create_app
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.registry.offer import Offer

from .conftest import Env
from .money import assert_money_invariants
from .paid_support import ShortEngine, node_payments, paid_settings, served
from .support import needs_anvil

pytestmark = [*needs_anvil, pytest.mark.timeout(60)]

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6}
DEPOSIT = 200_000
HEADROOM = 15_000  # a request's worst case: 3 * 1000 + 6 * 2000
CHAIN_TIMEOUT_S = 1.5


class FlakyRpc:
    """A JSON-RPC proxy in front of the dev chain that, while ``failing``, answers every
    call but ``eth_chainId`` with HTTP 503 (counted in ``refused``): a chain that cannot
    be read now."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.failing = False
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if proxy.failing and json.loads(body).get("method") != "eth_chainId":
                    proxy.refused += 1
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                forwarded = urllib.request.Request(
                    proxy.upstream, data=body, headers={"content-type": "application/json"})
                with urllib.request.urlopen(forwarded, timeout=10) as answer:
                    data = answer.read()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def flaky_rpc(upstream: str) -> Iterator[FlakyRpc]:
    rpc = FlakyRpc(upstream)
    thread = threading.Thread(target=rpc.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rpc
    finally:
        rpc.server.shutdown()
        rpc.server.server_close()


@pytest.fixture
async def node_url(env: Env, tmp_path: Path) -> AsyncIterator[str]:
    """A paid in-process node on the dev chain; its OpenAI base (``/v1``)."""
    account: LocalAccount = Account.from_key(env.dev.private_keys[6])
    ledger = tmp_path / "ledger.sqlite"
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger), None,
                     node_payments(env.dev.rpc_url, ledger, account))
    async with served(app) as url:
        yield url + "/v1"


async def _state(url: str) -> NodeState:
    async with httpx.AsyncClient(timeout=10) as http:
        offer = await http.get(url.removesuffix("/v1") + "/.well-known/agoranet")
    return NodeState(url, offer=Offer.model_validate_json(offer.content))


async def _ask(url: str, auth: PayerAuth | None, payment: Payment | None = None
               ) -> httpx.Response:
    """One request paid through ``auth`` with ``payment`` (by default a fresh one), within
    the relay's maximum for it."""
    paid = auth.paying(payment or Payment(HEADROOM)) if auth is not None else None
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with http.stream("POST", "/chat/completions", json=BODY, auth=paid) as answer:
            await answer.aread()
        return answer


async def test_chain_calls_are_one_short_try_and_an_unreadable_chain_keeps_the_saved_channel(
        env: Env, node_url: str, payer: LocalAccount, tmp_path: Path) -> None:
    root = tmp_path / "channels"
    payers = NodePayers(env.dev.rpc_url, payer, root, DEPOSIT, chain_timeout_s=CHAIN_TIMEOUT_S)
    auth = await payers.auth(await _state(node_url))
    [p] = payers.payers()
    # every JSON-RPC call gives up after the gateway's chain timeout, and is not retried
    provider = p.w3.provider
    assert isinstance(provider, HTTPProvider)
    assert provider.get_request_kwargs()["timeout"] == CHAIN_TIMEOUT_S
    assert provider.exception_retry_configuration is None
    assert (await _ask(node_url, auth)).status_code == 200
    assert p.state is not None
    channel, charged = p.state.channel_id, p.state.charged
    assert charged > 0
    payers.close()

    with flaky_rpc(env.dev.rpc_url) as rpc:
        again = NodePayers(rpc.url, payer, root, DEPOSIT, chain_timeout_s=CHAIN_TIMEOUT_S)
        state = await _state(node_url)
        rpc.failing = True  # the gateway restarts while the chain cannot be read
        auth = await again.auth(state)
        assert rpc.refused == 1  # the channel read was tried once, not retried
        [q] = again.payers()
        assert q.state is not None
        assert (q.state.channel_id, q.state.deposited, q.state.charged) == \
            (channel, DEPOSIT, charged)  # the saved channel, as it was
        assert state.events == [] and state.failures == 0 and not state.banned()
        payment = Payment(HEADROOM)  # the node checks the voucher on its own chain:
        answer = await _ask(node_url, auth, payment)
        assert answer.status_code == 200, answer.text
        assert payment.receipt is not None
        assert q.state.charged == charged + payment.receipt.amount
        rpc.failing = False
        assert_money_invariants(q, HEADROOM)
        again.close()


async def test_a_jobs_channel_lives_in_its_own_folder_and_is_closed_with_the_others(
        env: Env, node_url: str, payer: LocalAccount, tmp_path: Path) -> None:
    root, folder = tmp_path / "channels", tmp_path / "job-1"
    payers = NodePayers(env.dev.rpc_url, payer, root, DEPOSIT)
    state = await _state(node_url)
    job = await asyncio.to_thread(payers.open_payer, state, folder)
    assert job.root == node_url.removesuffix("/v1")
    assert job.state is not None and job.state.deposited == DEPOSIT
    assert job.onchain() == (DEPOSIT, 0)
    assert any(folder.iterdir()) and not root.exists()  # not the node's own channel folder
    payers.close()  # the job's payer too (the gateway stops)
    again = NodePayers(env.dev.rpc_url, payer, root, DEPOSIT)
    held = await asyncio.to_thread(again.open_payer, state, folder)  # the job resumes
    assert held.state is not None and held.state.channel_id == job.state.channel_id
    assert held.onchain() == (DEPOSIT, 0)  # nothing deposited twice
    again.close()


async def test_one_nodes_slow_channel_opening_does_not_hold_up_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a channel waits for a deposit to be mined; a second node's first request
    opens its own channel meanwhile. (Unit test of the locking: the openings are fakes.)"""
    payers = NodePayers("http://127.0.0.1:1", Account.create(), tmp_path, 1000)
    slow, fast = (NodeState(f"http://{host}/v1", offer=_paid_offer()) for host in ("a", "b"))
    other_started = threading.Event()
    opened: list[str] = []

    def open_channel(node: NodeState, folder: Path | None = None) -> Any:
        if node is slow:  # still mining until the other node's opening has begun
            assert other_started.wait(timeout=20), "the other node's opening never began"
        else:
            other_started.set()
        opened.append(node.url)
        return types.SimpleNamespace(max_per_request=None, close=lambda: None)

    monkeypatch.setattr(payers, "_open", open_channel)
    first = asyncio.ensure_future(payers.auth(slow))
    await asyncio.sleep(0)  # the slow node's opening is under way (and holds its lock)
    second = await payers.auth(fast)
    assert second is not None and await first is not None
    assert opened == [fast.url, slow.url]
    assert await payers.auth(slow) is await first  # opened once
    payers.close()


def _paid_offer() -> Offer:
    return Offer.model_validate({
        "engine": "sim", "models": [{"id": "m", "context_length": 64,
                                     "price": {"input_per_million": 1, "output_per_million": 1}}],
        "payment": _PAYMENT})


_PAYMENT: dict[str, Any] = {
    "schemes": ["batch-settlement"], "network": "eip155:31337", "asset": "0x" + "11" * 20,
    "pay_to": "0x" + "22" * 20, "receiver_authorizer": "0x" + "22" * 20,
    "withdraw_delay": 3600, "min_deposit": 0, "token_name": "USD", "token_version": "1"}
