"""A paid node's garbage at the gateway's payer: 503, never a 500 (found by ``bench/fuzz.py``).

The gateway pays a fake paid node on the dev chain (a real channel, opened by its
payer). A receipt event without its payment response (``x402_payment_response``)
made the payer's stream tap raise KeyError, and ``choices`` that is not a list made
it raise TypeError: the gateway answered 500, or cut a started stream off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain, find_anvil, start_devchain
from agoranet.config import ChainSettings, GatewaySettings
from agoranet.errors import DevChainError
from agoranet.gateway.app import build_service, create_gateway_app
from agoranet.gateway.policy import Policy

from .garbage_node import GarbageNode, garbage_node, paid_offer
from .strategies import GOOD_STREAM, NodeScenario, _sse

try:
    find_anvil()
    NO_ANVIL = ""
except DevChainError as exc:
    NO_ANVIL = str(exc)

pytestmark = pytest.mark.skipif(bool(NO_ANVIL), reason=NO_ANVIL or "-")

RECEIPT = {"id": "receipt-x", "created": 0, "model": "tiny", "choices": [],
           "object": "agoranet.receipt"}
GARBAGE = [
    RECEIPT,  # no payment response at all
    {**RECEIPT, "object": "agoranet.receipt.running"},
    {**GOOD_STREAM[0], "choices": 5},
]


@pytest.fixture(scope="module")
def chain() -> Iterator[DevChain]:
    with start_devchain() as dev:
        yield dev


@pytest.fixture(scope="module")
def node(chain: DevChain) -> Iterator[GarbageNode]:
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    with garbage_node(paid_offer(Account.from_key(chain.private_keys[9]), addresses,
                                 chain.chain_id)) as fake:
        yield fake


@pytest.fixture
async def gateway(chain: DevChain, node: GarbageNode,
                  tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(nodes=[node.url], rpc_url=chain.rpc_url, deposit=100_000,
                               spend_log=tmp_path / "spend.sqlite")
    service = build_service(settings, Policy(ban_base_s=0.001, ban_cap_s=0.001),
                            Account.from_key(chain.private_keys[8]))
    await service.directory.refresh()
    transport = httpx.ASGITransport(app=create_gateway_app(service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=60) as client:
            yield client
    finally:
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()
        if service.payers is not None:
            service.payers.close()


def ask(stream: bool) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4,
            "stream": stream}


@pytest.mark.parametrize("event", GARBAGE, ids=range(len(GARBAGE)))
async def test_payment_garbage_before_the_answer_is_a_503(
        gateway: httpx.AsyncClient, node: GarbageNode, event: dict[str, Any]) -> None:
    node.scenario = NodeScenario(body=_sse([event, *GOOD_STREAM, b"data: [DONE]\n\n"]))
    for stream in (False, True):
        response = await gateway.post("/v1/chat/completions", json=ask(stream))
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "upstream_error"


@pytest.mark.parametrize("event", GARBAGE, ids=range(len(GARBAGE)))
async def test_payment_garbage_mid_answer_ends_the_stream_with_an_error_event(
        gateway: httpx.AsyncClient, node: GarbageNode, event: dict[str, Any]) -> None:
    node.scenario = NodeScenario(body=_sse([GOOD_STREAM[0], event, *GOOD_STREAM[1:],
                                            b"data: [DONE]\n\n"]))
    async with gateway.stream("POST", "/v1/chat/completions", json=ask(True)) as response:
        assert response.status_code == 200
        events = [line[5:].strip() async for line in response.aiter_lines()
                  if line.startswith("data:")]
    assert '"error"' in events[-1], events[-1]


@pytest.mark.parametrize("header", ["%%%", "e30gx", "eyJleHRyYSI6IFsxXX0="],  # {"extra": [1]}
                         ids=["not-base64", "not-json", "extra-a-list"])
async def test_a_bad_payment_response_header_is_a_503(
        gateway: httpx.AsyncClient, node: GarbageNode, header: str) -> None:
    """A node answering JSON with a ``PAYMENT-RESPONSE`` that is not base64 JSON, or whose
    ``extra`` is not an object: the payer's ValueError (AttributeError) was a 500."""
    node.scenario = NodeScenario(200, {"PAYMENT-RESPONSE": header},
                                 b'{"choices": [{"message": {"content": "x"}}]}',
                                 "application/json")
    response = await gateway.post("/v1/chat/completions", json=ask(False))
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "upstream_error"
