"""``/metrics`` and the log lines of a real paid node and a real gateway (processes, the dev
chain): after paid requests, plain and streamed, both scrapes parse with Prometheus' own
parser and their counters moved by exactly the usage and the receipted base units of those
requests; the node's own claims are logged per transaction and counted; every request is one
JSON line on each side, with none of the prompt, the keys or the signatures; the money
invariants hold."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import free_port, running_command
from promtext import Scrape

pytestmark = pytest.mark.slow

PASSWORD = "metrics-paid"
PROMPT = "Describe the lighthouse keeper's hidden ledger."
REQUESTS = 4


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _scrape(url: str, secret: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.get(url, headers=headers, timeout=10)


def test_metrics_and_logs_move_by_exactly_what_the_requests_used_and_paid(
        chain: DevChain, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.config import ChainSettings
    from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore
    from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot

    monkeypatch.setenv(PASSWORD_ENV_VAR, PASSWORD)
    wallets = {}
    for name, index in (("node", 3), ("gateway", 5)):
        wallets[name] = tmp_path / f"{name}.json"
        create_keystore(wallets[name], PASSWORD, scrypt_n=2**10, private_key=bytes.fromhex(
            chain.private_keys[index].removeprefix("0x")))
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    before = chain_snapshot(w3, addresses, [chain.accounts[3], chain.accounts[5]])
    ledger, home = tmp_path / "ledger.sqlite", tmp_path / "gw"
    node_log, gateway_log = tmp_path / "node.log", tmp_path / "gateway.log"
    node_port, gateway_port = free_port(), free_port()
    node_metrics = f"http://127.0.0.1:{node_port}/metrics"
    gateway_metrics = f"http://127.0.0.1:{gateway_port}/metrics"
    with running_command(
            ["node", "--model", str(tiny_model), "--price-in", "1000000", "--price-out",
             "3000000", "--rpc-url", chain.rpc_url, "--keystore", str(wallets["node"]),
             "--ledger", str(ledger), "--settle-interval", "0.5", "--claim-max-age", "1",
             "--receipt-every", "2", "--no-fine-tuning", "--no-adapters",
             "--log-format", "json"], port=node_port, output=node_log) as node_url, \
            running_command(
                ["gateway", "--node", node_url, "--rpc-url", chain.rpc_url, "--keystore",
                 str(wallets["gateway"]), "--deposit", "500000", "--spend-log",
                 str(home / "spend.sqlite"), "--log-format", "json"],
                port=gateway_port, output=gateway_log) as gateway_url:
        owner = (home / "owner.key").read_text().strip()
        operator = (tmp_path / "operator.secret").read_text().strip()
        # Neither scrape opens without its secret, nor with the other side's.
        for url, wrong in ((node_metrics, owner), (gateway_metrics, operator)):
            for secret in (None, wrong):
                refused = _scrape(url, secret)
                assert refused.status_code == 401, refused.text
                assert "agoranet_" not in refused.text
        node_before = Scrape(_scrape(node_metrics, operator).text)
        gateway_before = Scrape(_scrape(gateway_metrics, owner).text)
        answers = [_ask(gateway_url, owner, stream=bool(i % 2)) for i in range(REQUESTS)]
        prompt = sum(u["prompt_tokens"] for u, _ in answers)
        completion = sum(u["completion_tokens"] for u, _ in answers)
        amount = sum(s["amount"] for _, s in answers)
        assert amount > 0 and completion > 0
        unpaid = httpx.post(f"{node_url}/chat/completions", timeout=30, json={
            "model": "tiny", "messages": [{"role": "user", "content": PROMPT}]})
        assert unpaid.status_code == 402  # a buyer without payment: counted, not served
        # The node claims on its own (claim-max-age 1 s): wait for it in its metrics.
        deadline = time.monotonic() + 60
        while True:
            node_after = Scrape(_scrape(node_metrics, operator).text)
            if node_after.value("agoranet_node_settled_base_units_total") >= amount or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.5)
        gateway_after = Scrape(_scrape(gateway_metrics, owner).text)

    def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    [store] = {p.parent for p in home.rglob("payer.sqlite")}
    book = BuyerBook.from_payer_store(store, headroom=500_000)
    assert book.receipted == amount  # the gateway holds a signed receipt for every unit

    g = lambda name, **labels: moved(gateway_before, gateway_after, name, **labels)  # noqa: E731
    assert g("agoranet_gateway_prompt_tokens_total", model="tiny") == prompt
    assert g("agoranet_gateway_completion_tokens_total", model="tiny") == completion
    assert g("agoranet_gateway_spent_base_units_total") == amount
    assert g("agoranet_gateway_requests_total", model="tiny", outcome="ok") == REQUESTS
    assert g("agoranet_gateway_channel_charged_base_units") == amount
    assert gateway_after.value("agoranet_gateway_channel_deposit_base_units") == 500_000
    assert gateway_after.value("agoranet_gateway_channel_remaining_base_units") == \
        500_000 - gateway_after.value("agoranet_gateway_channel_charged_base_units")

    n = lambda name, **labels: moved(node_before, node_after, name, **labels)  # noqa: E731
    assert n("agoranet_node_prompt_tokens_total", model="tiny") == prompt
    assert n("agoranet_node_completion_tokens_total", model="tiny") == completion
    assert n("agoranet_node_receipted_base_units_total", model="tiny") == amount
    assert n("agoranet_node_earned_base_units_total") == amount
    assert n("agoranet_node_requests_total", model="tiny", outcome="ok") == REQUESTS
    assert n("agoranet_node_requests_total", outcome="payment_required") == 1
    assert n("agoranet_node_payment_required_total") == 1
    assert n("agoranet_node_claimed_base_units_total") == amount
    assert n("agoranet_node_settled_base_units_total") == amount
    assert n("agoranet_node_settlement_transactions_total", kind="claim", outcome="ok") >= 1
    assert node_after.value("agoranet_node_unclaimed_base_units") == 0

    gateway_lines = [e for e in _lines(gateway_log) if e.get("event") == "request"]
    node_lines = _lines(node_log)
    requests = [e for e in node_lines if e.get("event") == "request"]
    ids = [s["request_id"] for _, s in answers]
    assert [e["request_id"] for e in gateway_lines] == ids
    for line, (used, summary) in zip(gateway_lines, answers, strict=True):
        assert (line["model"], line["prompt_tokens"], line["completion_tokens"],
                line["amount"], line["outcome"], line["nodes"]) == (
            "tiny", used["prompt_tokens"], used["completion_tokens"], summary["amount"], "ok",
            summary["nodes"])
    assert [e["outcome"] for e in requests].count("ok") == REQUESTS
    assert [e["status"] for e in requests if e["outcome"] != "ok"] == [402]
    assert sum(e["amount"] for e in requests) == amount
    assert sorted((e["prompt_tokens"], e["completion_tokens"]) for e in requests
                  if e["outcome"] == "ok") == sorted(
        (u["prompt_tokens"], u["completion_tokens"]) for u, _ in answers)
    claims = [e for e in node_lines if e.get("event") == "claim"]
    assert claims and all(e["outcome"] == "ok" and e["tx"].startswith("0x") for e in claims)
    assert sum(e["amount"] for e in claims) == amount
    assert [e["amount"] for e in node_lines if e.get("event") == "settle"][-1] > 0
    logs = node_log.read_text() + gateway_log.read_text()
    assert "lighthouse" not in logs and owner not in logs and operator not in logs
    for receipt in book.receipts:
        assert receipt.signature.removeprefix("0x") not in logs

    assert_money_invariants(w3, addresses, before=before, books=[book], ledger=ledger)


def _ask(url: str, key: str, *, stream: bool) -> tuple[dict[str, int], dict[str, Any]]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 6, "temperature": 0}
    headers = {"Authorization": f"Bearer {key}"}
    if not stream:
        reply = httpx.post(f"{url}/chat/completions", json=body, headers=headers, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()["usage"], reply.json()["agoranet"]
    usage: dict[str, int] = {}
    summary: dict[str, Any] = {}
    with httpx.stream("POST", f"{url}/chat/completions", headers=headers, timeout=60, json={
            **body, "stream": True, "stream_options": {"include_usage": True}}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                summary = chunk.get("agoranet") or summary
    return usage, summary
