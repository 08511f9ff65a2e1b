"""Issue #19: the gateway's and a node's dashboards in headless Chromium, on the demo network.

The demo's network (dev chain, four paid nodes of which 'shady' serves rounded weights and
'budget' cuts every second answer, a gateway that pays and audits) answers its questions;
then both dashboards are opened with their secrets (the gateway's with the owner key as a
bearer header, a node's through its login form). The pages must log no console error,
draw charts with data points, show a failover in the recent requests and the banned
cheater in the node table; without the secret every page and data endpoint answers 401,
and nothing on them reveals a key, a secret, a prompt or a signature. Screenshots go to
build/test-artifacts/ (Debian's chromium; Playwright's own browser download is not used).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from rich.console import Console

from agoranet.chain.devchain import find_anvil
from agoranet.demo.network_step import QUESTIONS, DemoNetwork, network_step
from agoranet.errors import DevChainError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")  # a 65-byte ECDSA signature


def _browser() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium installed (Debian: apt-get install chromium); the browser "
                    "test of the dashboards needs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; its own browser "
                    "download is not needed)")
    return sync_playwright


def _no_secrets(text: str, network: DemoNetwork) -> None:
    assert network.owner_key not in text
    assert not any(secret in text for secret in network.operator_secrets.values())
    assert not any(question in text for question in QUESTIONS)
    assert not SIGNATURE.search(text), SIGNATURE.search(text)
    assert "signature" not in text.lower()


def _check_gates(network: DemoNetwork) -> None:
    """401 without the secret (or with the wrong one, or with a buyer's key) everywhere."""
    node = next(iter(network.nodes.values()))
    secret = next(iter(network.operator_secrets.values()))
    for root, good in ((network.gateway, network.owner_key), (node, secret)):
        for path in ("/", "/agoranet/dashboard/data.json"):
            assert httpx.get(root + path).status_code == 401, root + path
            bad = httpx.get(root + path, headers={"Authorization": "Bearer wrong-secret-123"})
            assert bad.status_code == 401
            if path != "/":
                assert bad.json()["error"]["type"] == "authentication_error"
        assert httpx.get(root + "/", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    # the gateway's owner key opens no node, a node's secret not the gateway
    assert httpx.get(node + "/agoranet/dashboard/data.json",
                     headers={"Authorization": f"Bearer {network.owner_key}"}).status_code == 401
    assert httpx.get(network.gateway + "/agoranet/dashboard/channels.json",
                     headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def _watch(page: Any, errors: list[str]) -> None:
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))


# 0 until the page's charts are drawn (Chart.js, a deferred script, may not have run yet)
_POINTS = """id => { const c = typeof Chart === "undefined" ? null : Chart.getChart(id);
  return c ? c.data.datasets.reduce((n, d) => n + d.data.filter(v => v > 0).length, 0) : 0; }"""


def _until_a_failover(network: DemoNetwork, owner: dict[str, str]) -> None:
    """A few more paid requests, cheapest first, until one failed over: once the cheater
    is banned (its audit may finish after the demo's questions on a busy machine), the
    cheapest node left ('budget') cuts every second answer."""
    client = OpenAI(base_url=network.gateway + "/v1", api_key=network.owner_key, max_retries=0)
    for _ in range(8):
        data = httpx.get(network.gateway + "/agoranet/dashboard/data.json", headers=owner).json()
        shady = next(n for n in data["nodes"] if n["url"].startswith(network.nodes["shady"]))
        if shady["banned"] and any(r["failovers"] for r in data["requests"]):
            return
        if not shady["banned"]:
            time.sleep(2.0)  # its audit is still running
            continue
        stream = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Tell me about the beach."}],
            max_tokens=40, temperature=0, stream=True,
            extra_body={"agoranet": {"prefer": "cheapest"}})
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    raise AssertionError(f"no failover (shady banned: {shady['banned']})")


def _dashboards(network: DemoNetwork, found: dict[str, Any]) -> None:
    _check_gates(network)
    owner = {"Authorization": f"Bearer {network.owner_key}"}
    _until_a_failover(network, owner)
    gateway_data = httpx.get(network.gateway + "/agoranet/dashboard/data.json",
                             headers=owner).json()
    channels = httpx.get(network.gateway + "/agoranet/dashboard/channels.json", headers=owner)
    _no_secrets(gateway_data.__repr__() + channels.text, network)
    # the node that earned most so far: its earnings chart has points
    earned = {}
    for name, url in network.nodes.items():
        data = httpx.get(url + "/agoranet/dashboard/data.json", headers={
            "Authorization": f"Bearer {network.operator_secrets[name]}"})
        _no_secrets(data.text, network)
        earned[name] = data.json()["earnings"]["totals"]["charged"]
    node_name = max(earned, key=earned.__getitem__)
    assert earned[node_name] > 0, earned

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard-gateway-data.json").write_text(json.dumps(gateway_data, indent=1))
    with _browser()() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            errors: list[str] = []
            context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                          extra_http_headers=owner)
            page = context.new_page()
            _watch(page, errors)
            page.goto(network.gateway + "/")
            page.wait_for_function(f"() => ({_POINTS})('spend-chart') > 0", timeout=30_000)
            page.wait_for_function(f"() => ({_POINTS})('latency-chart') > 0", timeout=30_000)
            page.wait_for_selector("#requests-table tr.failover", timeout=30_000)
            page.wait_for_selector("#channels-table table", timeout=30_000)
            banned = page.locator("#nodes-table tr.banned").all_inner_texts()
            failovers = page.locator("#requests-table tr.failover").all_inner_texts()
            found["shady"] = network.nodes["shady"].removeprefix("http://")
            found["gateway"] = {"spend_points": page.evaluate(_POINTS, "spend-chart"),
                                "banned": banned, "failovers": failovers}
            _no_secrets(page.content(), network)
            page.screenshot(path=str(ARTIFACTS / "dashboard-gateway.png"), full_page=True)
            context.close()

            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            _watch(page, errors)
            node_url = network.nodes[node_name]
            page.goto(node_url + "/login")
            page.fill("input[name=secret]", network.operator_secrets[node_name])
            with page.expect_navigation():  # to the dashboard (on a busy machine, not at once)
                page.click("button[type=submit]")
            page.wait_for_function(f"() => ({_POINTS})('earnings-chart') > 0", timeout=30_000)
            page.wait_for_selector("#channels-table table", timeout=30_000)
            found["node"] = {"name": node_name,
                             "earnings_points": page.evaluate(_POINTS, "earnings-chart"),
                             "claims": page.locator("#claims-table tr").count()}
            _no_secrets(page.content(), network)
            page.screenshot(path=str(ARTIFACTS / "dashboard-node.png"), full_page=True)
            context.close()
            found["errors"] = errors
        finally:
            browser.close()


def test_dashboards_in_a_browser(tiny_model: Path, tmp_path: Path) -> None:
    _browser()
    try:
        find_anvil()
    except DevChainError as exc:
        pytest.skip(str(exc))
    found: dict[str, Any] = {}
    out = io.StringIO()
    try:
        network_step(tiny_model, tmp_path, Console(file=out, width=120),
                     at_end=lambda network: _dashboards(network, found))
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "dashboard-demo-output.txt").write_text(out.getvalue())
    print(found)
    assert found["errors"] == [], found["errors"]
    assert found["gateway"]["spend_points"] > 0
    assert any(found["shady"] in row and "banned" in row for row in found["gateway"]["banned"]), \
        found
    assert found["gateway"]["failovers"], found
    assert found["node"]["earnings_points"] > 0
    assert (ARTIFACTS / "dashboard-gateway.png").stat().st_size > 10_000
    assert (ARTIFACTS / "dashboard-node.png").stat().st_size > 10_000
