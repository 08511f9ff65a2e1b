"""What a payer remembers of the vouchers it signed (matched against a receipt a node shows
later, in a corrective 402): the last eight requests, a request paid again (a retry) counting
as the newest; an older one is forgotten, with what a cut stream of it counted beyond its
receipt -- that spend stays counted; a fine-tuning job's payment held until the job is
released. On the dev chain (for the deposit), against an offer
served in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from eth_account.signers.local import LocalAccount

from agoranet.payments.pay.payer import Payer
from agoranet.payments.pay.payer_store import PayerStore

from .conftest import Env
from .offered_node import offered_node  # noqa: F401  (fixture)
from .support import needs_anvil

pytestmark = needs_anvil

MAX = 100_000  # each request's maximum


def _kept(p: Payer, folder: Path) -> list[str]:
    """The requests remembered, oldest first; the payer's store says the same."""
    assert p.state is not None and p.state_dir == folder
    data = PayerStore(p.state_dir).load()
    assert data is not None and data["payments"] == p.state.payments
    return list(p.state.payments)


async def test_the_last_eight_requests_are_remembered(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(offered, env.w3, env.addresses, account=payer, state_dir=tmp_path)
        p.open(MAX)
        for n in range(9):
            p.pay(MAX, f"r{n}")
        assert _kept(p, tmp_path) == [f"r{n}" for n in range(1, 9)]
        assert p.state is not None and p.state.payments["r8"] == [MAX, 0, 0, 0]
        p.close()

    await asyncio.to_thread(run)


async def test_a_request_paid_again_counts_as_the_newest(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(offered, env.w3, env.addresses, account=payer, state_dir=tmp_path)
        p.open(MAX)
        for name in "abcdefgh":
            p.pay(MAX, name)
        p.pay(MAX // 2, "a")  # a retry of the oldest, with a smaller maximum
        p.pay(MAX, "i")
        assert _kept(p, tmp_path) == ["c", "d", "e", "f", "g", "h", "a", "i"]
        assert p.state is not None and p.state.payments["a"] == [MAX // 2, 0, 0, 0]
        p.close()

    await asyncio.to_thread(run)


async def test_a_forgotten_cut_stream_keeps_its_spend(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(offered, env.w3, env.addresses, account=payer, state_dir=tmp_path)
        p.open(MAX)
        pending = p.pay(MAX, "cut")
        # one answer token, no receipt: the prompt fills the context's other 63 tokens
        assert p.cut(pending, None, "fake", arrived=1) == 63 * 1_000 + 2_000
        assert p.state is not None and p.state.unreceipted == {"cut": 65_000}
        for n in range(7):
            p.pay(MAX, f"r{n}")
        assert p.state.unreceipted == {"cut": 65_000}  # still one of the last eight
        p.pay(MAX, "r7")
        assert "cut" not in _kept(p, tmp_path)
        data = PayerStore(tmp_path).load()
        assert data is not None and (data["unreceipted"], data["spent"]) == ({}, 65_000)
        p.close()

    await asyncio.to_thread(run)


async def test_a_held_job_payment_is_remembered_until_it_is_released(
        env: Env, offered: str, payer: LocalAccount, tmp_path: Path) -> None:
    def run() -> None:
        p = Payer(offered, env.w3, env.addresses, account=payer, state_dir=tmp_path)
        p.open(MAX)
        assert p.held_jobs() == []
        pending = p.pay(MAX, "job")
        p.hold(pending, {"extra": {"held": True, "requestId": "job", "maxAmount": str(MAX)}})
        assert p.held_jobs() == ["job"]
        # the job ended without a charge: its voucher no longer counts for anything
        assert p.settle_job({"request_id": "job", "status": "released"}) is None
        assert p.held_jobs() == [] and _kept(p, tmp_path) == []
        assert p.state is not None and (p.state.charged, p.state.spent) == (0, 0)
        p.close()

    await asyncio.to_thread(run)
