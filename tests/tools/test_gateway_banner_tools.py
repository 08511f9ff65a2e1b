"""The gateway's start banner names its tool sellers (``--tools`` and the registry's).

Against a real tool server (``agoranet tools serve``, paid, on the dev chain) and a URL
where nothing answers: the probe reads and checks each seller's signed offer, and the
banner says how many answer, with how many tools, paid or free, and warns about the one
that does not answer -- and, on a gateway without a wallet, about the paid one it cannot
buy from. A seller whose offer the gateway would refuse (signed by someone other than
its payee) is named as refused.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from rich.console import Console

from agoranet.cli.gateway_banner import ToolProbe, gateway_banner, probe_tool_sellers
from agoranet.config import GatewaySettings

from .support import ToolProcess

pytestmark = pytest.mark.timeout(120)


def _dead_url() -> str:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _banner(settings: GatewaySettings, probes: list[ToolProbe], payer: str | None) -> str:
    console = Console(record=True, width=80)
    gateway_banner(console, settings, payer=payer, spent=0, probes=[], owner_key=None,
                   tool_probes=probes)
    return " ".join(console.export_text().replace("│", " ").split())


def test_the_banner_names_tool_sellers(kit: ToolProcess) -> None:
    dead = _dead_url()
    settings = GatewaySettings(tools=[kit.root + "/", dead + "/tools"])
    probes = probe_tool_sellers(settings)
    tools = len(httpx.get(f"{kit.root}/tools", timeout=10).json()["data"])
    assert tools >= 2
    assert probes[0] == ToolProbe(kit.root, None, tools, True)
    assert probes[1].url == dead and "does not answer" in (probes[1].error or "")
    text = _banner(settings, probes, "0xPayer")
    assert f"tool sellers 1 of 2 answering, {tools} tools (1 paid, 0 free)" in text
    assert f"warning: tool seller {dead} does not answer" in text
    assert "no wallet" not in text
    unpaid = _banner(settings, probes, None)
    assert f"warning: tool seller {kit.root} asks payment and this gateway has no " \
           "wallet" in unpaid


def test_an_offer_the_gateway_would_refuse_is_named(kit: ToolProcess) -> None:
    offer = httpx.get(f"{kit.root}/.well-known/agoranet", timeout=10).json()
    offer["tools"][0]["description"] = "tampered"  # its signature no longer matches
    body = json.dumps(offer).encode()

    class Forger(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forger)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        root = f"http://127.0.0.1:{server.server_address[1]}"
        [probe] = probe_tool_sellers(GatewaySettings(tools=[root]))
    finally:
        server.shutdown()
        server.server_close()
    assert probe.url == root and probe.tools == 0
    assert "sends an offer the gateway refuses" in (probe.error or ""), probe


def test_no_seller_no_row() -> None:
    settings = GatewaySettings()
    assert probe_tool_sellers(settings) == []
    assert "tool sellers" not in _banner(settings, [], None)
