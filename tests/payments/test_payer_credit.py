"""A top-up paid into the channel off the payer's thread (the gateway's node payer runs
``open_channel`` on a task of its own, then ``Payer.credit`` on the loop) is counted once in
the channel's state, kept in the payer's store, and agrees with the deposit on chain; a
payer with no channel refuses the credit and stays without one. A real Payer on the dev
chain, the node's offer read from its app in process (a payer reads nothing else of it)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from starlette.testclient import TestClient

from agoranet.errors import PaymentError
from agoranet.payments.channels import open_channel
from agoranet.payments.pay.payer import Payer

from .conftest import Env
from .money import assert_money_invariants
from .paid_support import ShortEngine, in_process_node
from .support import needs_anvil

pytestmark = [*needs_anvil, pytest.mark.timeout(60)]

DEPOSIT = 20_000
TOP_UP = 5_000
HEADROOM = 15_000


@pytest.fixture
def node(env: Env, tmp_path: Path) -> Iterator[httpx.MockTransport]:
    """The node's offer (``/.well-known/agoranet``) as its app in process serves it."""
    with in_process_node(env, tmp_path, ShortEngine()) as served, \
            TestClient(served.app) as app:
        offer = app.get("/.well-known/agoranet").raise_for_status().content
    yield httpx.MockTransport(lambda request: httpx.Response(200, content=offer))


def _payer(env: Env, payer: LocalAccount, folder: Path, node: httpx.MockTransport) -> Payer:
    return Payer("http://node", env.w3, env.addresses, account=payer, state_dir=folder,
                 max_per_request=HEADROOM, http=httpx.Client(transport=node))


def test_a_credited_top_up_is_counted_once_kept_and_matches_the_chain(
        env: Env, payer: LocalAccount, node: httpx.MockTransport, tmp_path: Path) -> None:
    p = _payer(env, payer, tmp_path / "payer", node)
    channel = p.open(DEPOSIT)
    open_channel(env.w3, env.addresses, payer, p.config, TOP_UP)  # paid elsewhere
    p.credit(TOP_UP)
    assert p.state is not None
    assert p.state.deposited == DEPOSIT + TOP_UP == p.onchain()[0]
    assert (p.state.voucher, p.state.charged, p.state.spent) == (0, 0, 0)
    again = _payer(env, payer, tmp_path / "payer", node)  # what the store kept
    assert again.state is not None
    assert (again.state.channel_id, again.state.deposited) == (channel, DEPOSIT + TOP_UP)
    assert again.reconcile() is None  # store and chain agree: nothing to repair
    assert_money_invariants(again, HEADROOM)
    again.close()
    p.close()


def test_crediting_a_payer_without_a_channel_is_refused(
        env: Env, payer: LocalAccount, node: httpx.MockTransport, tmp_path: Path) -> None:
    p = _payer(env, payer, tmp_path / "payer", node)
    with pytest.raises(PaymentError,
                       match=f"^{re.escape('no channel: call open(deposit) first')}$"):
        p.credit(TOP_UP)
    assert p.state is None
    assert _payer(env, payer, tmp_path / "payer", node).state is None  # nothing stored
    p.close()
