"""A paid node's background audit: paid through its channel, logged as audit spend."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from agoranet.chain.devchain import DevChain
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.market import TokenPrices, cost
from agoranet.node.launcher import running_command
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.wallet import create_keystore
from agoranet.verify.node_audit import PER_ROUND
from helpers import node_process, wait_until

pytestmark = pytest.mark.slow

PASSWORD = "gateway-paid-audit-test"


def keystore(chain: DevChain, index: int, path: Path) -> Path:
    key = bytes.fromhex(chain.private_keys[index].removeprefix("0x"))
    create_keystore(path, PASSWORD, private_key=key, scrypt_n=2**10)
    return path


def test_a_paid_audit_is_paid_by_channel_and_logged_within_its_share(
    chain: DevChain, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    spend_path = tmp_path / "gw" / "spend.sqlite"
    earlier = SpendLog(spend_path)  # what requests cost before: 2% of it is 20,000
    earlier.add(SpendRow("earlier", "tiny", "elsewhere", 10, 10, 1_000_000, None, 1.0, "ok"))
    earlier.close()
    with node_process([
            "--model", str(tiny_model), "--price-in", "100000", "--price-out", "300000",
            "--rpc-url", chain.rpc_url, "--keystore", str(keystore(chain, 3, tmp_path / "n.json")),
            "--ledger", str(tmp_path / "ledger.sqlite"), "--no-fine-tuning",
            "--no-adapters"]) as node, running_command([
            "gateway", "--open", "--rpc-url", chain.rpc_url,
            "--keystore", str(keystore(chain, 5, tmp_path / "gw.json")), "--deposit", "500000",
            "--spend-log", str(spend_path), "--node", node, "--audit-reference",
            str(tiny_model), "--audit-share", "1"]) as gateway:
        root = gateway.removesuffix("/v1")
        client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
        wait_until(lambda: bool(_nodes(root)["nodes"][0]["models"]))
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
        assert reply.model_extra["agoranet"]["amount"] > 0  # type: ignore[index]
        wait_until(lambda: bool(_nodes(root)["nodes"][0]["audits"]), timeout=180)
        state = _nodes(root)
    row, audits_status = state["nodes"][0], state["audits"]
    assert row["audits"][-1].startswith("passed") and row["audits_passed"] == 1
    log = SpendLog(spend_path)
    audits = [r for r in log.rows() if r.outcome == "audit"]
    requests_total = log.total() - log.audit_total()
    log.close()
    assert len(audits) == PER_ROUND
    prices = TokenPrices(100_000, 300_000)
    for audit in audits:  # each challenge paid by voucher, backed by the node's receipt
        assert audit.receipt is not None
        receipt = Receipt.from_json(json.loads(audit.receipt))
        verify_receipt(receipt, chain.accounts[3])
        assert audit.amount == receipt.amount == cost(prices, receipt.tokens_in,
                                                      receipt.tokens_out) > 0
        assert (audit.prompt_tokens, audit.completion_tokens) == (receipt.tokens_in,
                                                                  receipt.tokens_out)
    total = sum(a.amount for a in audits)
    print(f"\npaid audit: {PER_ROUND} challenges cost {total} base units; requests "
          f"{requests_total}; allowance {audits_status['allowance']}")
    assert audits_status["spent"] == total and audits_status["reserved"] == 0
    assert total * 50 <= requests_total


def _nodes(root: str) -> dict[str, object]:
    return dict(httpx.get(f"{root}/agoranet/nodes", timeout=10).json())
