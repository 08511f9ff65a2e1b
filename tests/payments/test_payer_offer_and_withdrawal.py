"""The payer's first and last steps, against served in-process nodes on the dev chain.

First: it pays a node only if the node's offer is readable, for payment, signed by the
payee it names and in our token; a dishonest or broken node's offer is refused with the
reason. Then: it never moves more of the wallet into the channel than it was told to
(no top-up unless one is set), it takes a channel with the node's withdraw delay, it
repairs a channel the chain disagrees with (:meth:`Payer.reconcile`), and at the end it
takes back what the node has not claimed: after the withdraw delay, or at once on the dev
chain. Each payment scenario ends with the money invariants (:mod:`.money`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

from agoranet.chain.rpc import http_provider
from agoranet.errors import CannotPayError, PaymentError
from agoranet.node.app import create_app
from agoranet.node.payment_setup import NodePayments
from agoranet.payments.channels import new_config, open_channel
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer import Payer
from agoranet.payments.pay.payer_store import ChannelState
from agoranet.registry.offer import Offer
from agoranet.registry.signing import sign_offer

from .conftest import Env
from .money import assert_money_invariants, receipted
from .paid_support import ShortEngine, node_payments, other_token, paid_settings, served
from .support import needs_anvil, token_balance

pytestmark = needs_anvil

BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 6}
HEADROOM = 20_000  # each request's maximum (its worst case is 3*1000 + 6*2000 = 15,000)
DELAY = 1_800  # this node's withdraw delay: twice the least one, so the payer must read it


@dataclass
class Node:
    url: str
    account: LocalAccount
    payments: NodePayments


@pytest.fixture
async def node(env: Env, tmp_path: Path) -> AsyncIterator[Node]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[7])
    ledger = tmp_path / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account, withdraw_delay=DELAY)
    app = create_app(ShortEngine(words=3, max_active=4, max_queue=16),
                     paid_settings(env.dev.rpc_url, ledger, withdraw_delay=DELAY), None,
                     payments)
    async with served(app) as url:
        yield Node(url, account, payments)


def _payer(env: Env, url: str, account: LocalAccount, folder: Path, **kw: int) -> Payer:
    return Payer(url, env.w3, env.addresses, account=account, state_dir=folder,
                 max_per_request=HEADROOM, **kw)


def _ask(p: Payer, url: str, times: int = 1) -> None:
    with httpx.Client(base_url=url, auth=PayerAuth(p), timeout=30) as http:
        for _ in range(times):
            response = http.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 200, response.text


async def test_the_payer_takes_back_what_the_node_has_not_claimed(
        env: Env, node: Node, payer: LocalAccount, tmp_path: Path) -> None:
    """The channel is opened with the node's withdraw delay (the node refuses any other),
    so paying works; the node claims its receipts; the withdrawal waits out that delay
    (nothing comes back before), then returns the deposit less what was claimed."""
    def pay() -> Payer:
        p = _payer(env, node.url, payer, tmp_path / "payer")
        p.open(100_000)
        assert p.config.withdraw_delay == DELAY
        _ask(p, node.url, times=2)
        return p

    p = await asyncio.to_thread(pay)
    assert p.state is not None and p.state.charged == receipted(p) > 0
    await asyncio.to_thread(node.payments.settler.tick, force=True)
    claimed, held = assert_money_invariants(p, HEADROOM)
    assert claimed == held == p.state.charged  # the node claimed all its receipts

    def withdraw() -> None:
        wallet = token_balance(env.w3, env.addresses, payer.address)
        started = p.withdraw()
        assert started.state == "pending"  # the node has DELAY seconds left to claim
        assert started.finalize_after == started.channel.withdraw_initiated_at + DELAY
        assert token_balance(env.w3, env.addresses, payer.address) == wallet
        done = p.withdraw(advance_time=True)  # dev chain: its clock moves past the delay
        assert done.state == "finalized"
        assert done.returned == 100_000 - claimed
        assert token_balance(env.w3, env.addresses, payer.address) == wallet + done.returned
        assert p.onchain() == (claimed, claimed)
        assert p.withdraw().state == "nothing-left"

    await asyncio.to_thread(withdraw)
    assert_money_invariants(p, HEADROOM)
    p.close()


async def test_no_top_up_unless_one_is_set(env: Env, node: Node, payer: LocalAccount,
                                           tmp_path: Path) -> None:
    """A payer told no top-up never moves more of the wallet into the channel: a request
    whose voucher the deposit does not cover is refused before anything is signed."""
    def run() -> None:
        p = _payer(env, node.url, payer, tmp_path / "payer")
        p.open(25_000)
        wallet = token_balance(env.w3, env.addresses, payer.address)
        with pytest.raises(CannotPayError, match=re.escape(
                "the channel's deposit (25000) does not cover the next voucher (30000): "
                "top it up")):
            p.pay(30_000)
        assert p.state is not None
        assert (p.state.deposited, p.state.voucher) == (25_000, 0)
        assert token_balance(env.w3, env.addresses, payer.address) == wallet
        assert p.onchain() == (25_000, 0)
        p.close()

    await asyncio.to_thread(run)


async def test_a_channel_the_chain_disagrees_with_is_repaired(
        env: Env, node: Node, payer: LocalAccount, tmp_path: Path) -> None:
    """A deposit on chain that differs from the store is adopted; a channel with a
    withdrawal under way is retired (its receipts and spend stay on record) and a new one
    opened with the top-up, which pays on; a channel that agrees is left alone."""
    def run() -> Payer:
        p = _payer(env, node.url, payer, tmp_path / "payer", top_up=50_000)
        p.open(100_000)
        _ask(p, node.url)
        assert p.reconcile() is None  # chain and store agree
        assert p.state is not None
        first, spent = p.state.channel_id, p.state.spent
        # the owner adds to the channel from another tool: the store did not see it
        open_channel(env.w3, env.addresses, payer, p.config, 30_000)
        done = p.reconcile()  # nobody listens (on_reconcile unset): still done and said
        assert done == (f"channel {first[:10]}… holds 130000 on chain, not the 100000 on "
                        "record: the deposit on chain is used")
        assert p.state.deposited == 130_000
        told: list[str] = []
        p.on_reconcile = told.append
        assert p.withdraw().state == "pending"  # the channel takes no new vouchers now
        done = p.reconcile()
        assert done is not None and told == [done]
        assert p.state.channel_id != first and p.state.deposited == 50_000
        assert (p.state.spent, p.state.charged) == (0, 0)
        assert done == (f"channel {first[:10]}… has a withdrawal under way: it takes no new "
                        f"vouchers: retired (its 1 receipts and {spent} spent stay on record) "
                        f"and channel {p.state.channel_id[:10]}… opened with 50000")
        [(old, why)] = p.retired()
        assert (old.channel_id, old.spent, old.receipts) == (first, spent, 1)
        assert why == "retired: has a withdrawal under way: it takes no new vouchers"
        _ask(p, node.url)  # the new channel pays
        assert p.onchain() == (50_000, 0)
        return p

    p = await asyncio.to_thread(run)
    assert p.state is not None and p.state.charged == p.state.spent > 0
    assert_money_invariants(p, HEADROOM)
    p.close()


async def test_a_dishonest_or_broken_nodes_offer_is_refused(
        env: Env, node: Node, payer: LocalAccount, tmp_path: Path) -> None:
    """The payer pays only a node whose offer it can read, that sells for payment, signed
    by the payee it names, in our token; each other offer is refused with that reason."""
    served_offer = await asyncio.to_thread(httpx.get, f"{node.url}/.well-known/agoranet",
                                           timeout=10)
    honest = Offer.model_validate_json(served_offer.content)
    assert honest.payment is not None
    stranger: LocalAccount = Account.create()
    token = await asyncio.to_thread(other_token, env, node.account.address, 1)
    offers = {
        "unsigned": honest.model_copy(update={"signature": None}),
        "stranger": sign_offer(honest, stranger),
        "token": sign_offer(honest.model_copy(update={"payment": honest.payment.model_copy(
            update={"asset": token})}), node.account),
        "free": sign_offer(honest.model_copy(update={"payment": None}), node.account),
    }

    async def offer(request: Request) -> Response:
        case = request.path_params["case"]
        if case not in offers:
            return Response("no offer here", status_code=404)
        return Response(offers[case].model_dump_json(), media_type="application/json")

    app = Starlette(routes=[Route("/{case}/.well-known/agoranet", offer)])
    async with served(app) as url:
        refusals = {
            "unsigned": "the node's offer signature is invalid: the offer is not signed",
            "stranger": f"the offer is signed by {stranger.address}, not its payee",
            "token": f"the node wants token {token}, not ours",
            "free": f"the node at {url}/free does not sell for payment",
            "missing": f"cannot read the node's offer at {url}/missing: ",
        }

        def run() -> None:
            for case, reason in refusals.items():
                with pytest.raises(PaymentError) as refused:
                    _payer(env, f"{url}/{case}/v1/", payer, tmp_path / case)
                assert str(refused.value).startswith(reason), (case, str(refused.value))
                assert not (tmp_path / case).exists() or not any((tmp_path / case).iterdir())
            _payer(env, f"{node.url}/v1", payer, tmp_path / "honest").close()

        await asyncio.to_thread(run)


async def test_a_channel_the_chain_no_longer_backs_is_replaced_or_refused_with_why(
        env: Env, node: Node, payer: LocalAccount, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The store names a channel the chain does not hold (a dev chain reset): replaced by
    a new one; one whose deposit is all charged (refunded down to it): replaced; with no
    deposit set to open a new one: refused, saying so; a chain that cannot be read:
    refused, or (when loading) the saved channel is used as it is."""
    def unknown(p: Payer, deposited: int) -> ChannelState:
        """What the store holds after a chain reset: a channel the chain never saw."""
        config = new_config(env.addresses, payer=payer.address, receiver=p.node,
                            payer_authorizer=payer.address, withdraw_delay=DELAY)
        return ChannelState(compute_channel_id(config, p.chain_id).lower(), config.to_dict(),
                            deposited=deposited, charged=9_000, spent=9_000, receipts=1)

    def run() -> None:
        p = _payer(env, node.url, payer, tmp_path / "reset", top_up=40_000)
        p.state = unknown(p, 100_000)
        gone = p.state.channel_id
        done = p.reconcile()
        assert [(r.levelname, r.getMessage()) for r in caplog.records
                if r.name == "agoranet.payments.pay.payer"] == [("WARNING", f"payer for {p.root}: {done}")]
        assert p.state.channel_id != gone and p.state.deposited == 40_000
        assert done == (f"channel {gone[:10]}… holds no deposit on chain (the chain was "
                        "reset, or the channel was never funded): retired (its 1 receipts "
                        f"and 9000 spent stay on record) and channel {p.state.channel_id[:10]}"
                        "… opened with 40000")
        assert p.onchain() == (40_000, 0)
        # everything on chain is already charged (a refund took the rest): nothing to pay
        # from, so it is replaced too
        spent_out = p.state.channel_id
        p.state.charged = p.state.spent = 40_000
        done = p.reconcile()
        assert done is not None and done.startswith(
            f"channel {spent_out[:10]}… was refunded: 40000 on chain, nothing left above the "
            "40000 already charged: retired")
        _ask(p, node.url)  # the new channel pays
        p.close()

        q = _payer(env, node.url, payer, tmp_path / "no-deposit")  # no top-up set
        q.state = unknown(q, 0)
        with pytest.raises(CannotPayError, match=re.escape(
                f"channel {q.state.channel_id[:10]}… holds no deposit on chain (the chain was "
                "reset, or the channel was never funded); no deposit is set to open a new one")):
            q.reconcile()
        q.open(30_000)
        q.w3 = Web3(http_provider("http://127.0.0.1:9", timeout=2, retry=False))  # no chain
        caplog.clear()
        assert q.reconcile(unreadable_ok=True) is None  # loading: used as saved, and said
        [said] = [r.getMessage() for r in caplog.records if r.name == "agoranet.payments.pay.payer"]
        assert said.startswith(f"payer for {q.root}: cannot check its channel on chain (")
        assert "cannot read the channel: " in said  # the chain's error, said
        assert said.endswith("); the saved channel is used as it is")
        with pytest.raises(CannotPayError, match=re.escape(
                f"cannot check channel {q.state.channel_id[:10]}… on chain: ")):
            q.reconcile()
        q.close()

    await asyncio.to_thread(run)
