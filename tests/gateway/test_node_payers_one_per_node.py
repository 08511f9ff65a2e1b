"""The gateway pays each node through one node payer: the requests to a node share its
top-up (a second request while the first one's top-up is under way starts no second
deposit), whichever request asked first. The payer is the stand-in of test_node_payer.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from test_node_payer import Chain, StandIn, node_payer

from agoranet.gateway.paying import NodePayers
from agoranet.payments.pay.httpx_auth import PayerAuth

pytestmark = pytest.mark.timeout(20)


class ClosingStandIn(StandIn):
    def close(self) -> None:
        self.store.close()


async def test_requests_to_one_node_share_its_top_up(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain()
    monkeypatch.setattr(node_payer, "open_channel", chain)
    payers = NodePayers("http://127.0.0.1:1", Account.create(), tmp_path / "channels", 1000)
    node: Any = SimpleNamespace(url="http://node/v1", offer=SimpleNamespace(payment=object()))
    state = ClosingStandIn(tmp_path, deposited=1000)
    payers._auths[node.url] = PayerAuth(state)  # type: ignore[arg-type]  # its channel, open
    first = await payers.paid(node, 300)  # room for it, and a top-up starts ahead of need
    for _ in range(100):
        if chain.calls:
            break
        await asyncio.sleep(0.01)
    assert [amount for amount, _ in chain.calls] == [1000]
    second = await payers.paid(node, 300)
    assert first is not None and second is not None
    assert second.payment.max_amount == 300
    await asyncio.sleep(0.05)
    assert len(chain.calls) == 1  # the same payer: its top-up under way covers both
    chain.mined.set()
    await payers.aclose()
    assert state.state.deposited == 2000
