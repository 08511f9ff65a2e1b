"""A buyer's mistake never counts against an honest node (issue #15, item 1).

Real node and gateway processes and the openai client: an adapter the node does not
have, a paid node in front of a gateway without a wallet, and a price cap that excludes
every node each get a clear 4xx that says what to do, without internal names; the node
keeps a clean record and serves the next valid request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import running_command
from agoranet.payments.wallet import create_keystore
from helpers import node_process, wait_until

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Hello!"}]
PASSWORD = "buyer-mistakes-test"


def _rows(gateway: str) -> list[dict[str, Any]]:
    root = gateway.removesuffix("/v1")
    return list(httpx.get(f"{root}/agoranet/nodes", timeout=10).json()["nodes"])


def _clean(row: dict[str, Any]) -> None:
    """The node's record holds no failure and no ban."""
    assert row["failures"] == 0 and not row["banned"], row
    assert row["ban_reason"] is None and row["score"] >= 0.5, row


def _no_internal_names(message: str) -> None:
    assert "_NodeFailed" not in message and "Error:" not in message, message
    assert "Traceback" not in message, message


def test_an_adapter_the_node_lacks_is_a_404_and_leaves_the_node_clean(
        tiny_model: Path, tmp_path: Path) -> None:
    with node_process(["--model", str(tiny_model), "--free", "--no-fine-tuning",
                       "--adapters-dir", str(tmp_path / "adapters")]) as node, \
            running_command(["gateway", "--open", "--node", node, "--spend-log",
                             str(tmp_path / "gw" / "spend.sqlite")]) as gateway:
        wait_until(lambda: bool(_rows(gateway)[0]["models"]))
        client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="tiny@adapter:" + "1" * 64,
                                           messages=QUESTION, max_tokens=4)
        message = caught.value.message
        _no_internal_names(message)
        assert "is not on this node" in message
        _clean(_rows(gateway)[0])
        # The next valid request is served by the same node.
        reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4)
        assert reply.choices[0].message.content
        row = _rows(gateway)[0]
        _clean(row)
        assert row["successes"] == 1


def test_a_paid_node_behind_a_gateway_without_a_wallet_is_a_402_not_a_ban(
        chain: DevChain, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    keystore = tmp_path / "node.json"
    create_keystore(keystore, PASSWORD, scrypt_n=2**10,
                    private_key=bytes.fromhex(chain.private_keys[3].removeprefix("0x")))
    with node_process(["--model", str(tiny_model), "--price-in", "100000", "--price-out",
                       "300000", "--rpc-url", chain.rpc_url, "--keystore", str(keystore),
                       "--ledger", str(tmp_path / "ledger.sqlite"), "--no-fine-tuning",
                       "--no-adapters"]) as node, \
            running_command(["gateway", "--open", "--node", node, "--spend-log",
                             str(tmp_path / "gw" / "spend.sqlite")]) as gateway:
        wait_until(lambda: bool(_rows(gateway)[0]["models"]))
        client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
        for _ in range(2):  # the same answer every time: the node was never banned
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4)
            assert caught.value.status_code == 402
            _no_internal_names(caught.value.message)
            assert "--keystore" in caught.value.message
            _clean(_rows(gateway)[0])
        # A price cap that excludes every node: a 402 that names the cheapest offer.
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4,
                                           extra_body={"agoranet": {"max_price_out": 1000}})
        assert caught.value.status_code == 402
        assert "cheapest offer is 100000 in / 300000 out" in caught.value.message
        _clean(_rows(gateway)[0])
