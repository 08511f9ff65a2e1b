"""Every listing command fits 80 columns, keeps the ids one must copy whole, shows money as
decimal stablecoin (base units on request) and dates as dates; ``--json`` has it all.

Each command runs through the real entry point with ``COLUMNS=80``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from clirun import Result, run_inprocess
from eth_account import Account

from agoranet.chain.devchain import DevChain, start_devchain
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.reputation import Reputation
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import ReceiptSigner
from agoranet.registry.onchain import registry_at
from payments.support import ANVIL_MISSING

SIGNER = ReceiptSigner(bytes(Account.create().key))
CHANNEL = "0x" + "ab" * 32
PAYER = "0x" + "Cd" * 20
NODE = "http://a-rather-long-node-host-name.example.org:8000/v1"
UNIX_TIME = re.compile(r"\b1[0-9]{9}(\.[0-9]+)?\b")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("AGORANET_HOME", str(tmp_path))

    def run(*args: str) -> Result:
        result = run_inprocess(capsys, monkeypatch, *args)
        assert result.code == 0, (args, result.out, result.err)
        return result
    return run


def fits(out: str) -> None:
    too_long = [line for line in out.splitlines() if len(line) > 80]
    assert not too_long, "\n".join(too_long)
    assert not UNIX_TIME.search(out), out


def test_node_earnings(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ledger.sqlite"
    book = SqliteLedger(path)
    book.ensure_channel(CHANNEL, json.dumps({}), PAYER, 0)
    hold = book.accept_voucher("r-1", CHANNEL, 1_250_000, "0x" + "22" * 65, 1_250_000)
    book.commit(hold, 1, 1, 1_250_000, SIGNER.sign, 31337)
    book.record_claim_failure(CHANNEL, "claim failed: InvalidSignature", time.time(),
                              lambda n: 30.0)
    book.close()
    out = cli("node", "earnings", "--ledger", str(path)).out
    fits(out)
    assert CHANNEL in out.splitlines()  # the whole channel id, on a line of its own
    assert "1.25" in out and "1250000" not in out
    assert "1250000" in cli("node", "earnings", "--ledger", str(path), "--base-units").out
    wide = cli("node", "earnings", "--ledger", str(path), "--wide").out
    assert PAYER in wide and "1.25" in wide
    data = json.loads(cli("node", "earnings", "--ledger", str(path), "--json").out)
    assert data["channels"][0]["channel"] == CHANNEL and data["channels"][0]["payer"] == PAYER
    assert data["channels"][0]["charged"] == 1_250_000 and data["total"]["charged"] == 1_250_000


def test_reputation_show(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    store = Reputation(tmp_path / "gateway" / "reputation.sqlite")
    NodeState(NODE, reputation=store).record_success(10, 5, 0.1)
    cheat = NodeState("http://cheat.example:8000/v1", reputation=store)
    cheat.record_audit("tiny", passed=False, answers=10, flagged=4, tokens=470)
    store.close()
    out = cli("reputation", "show").out
    fits(out)
    assert NODE in out and "banned until 20" in out
    assert "failed 1 audit" in cli("reputation", "show", "--wide").out
    data = json.loads(cli("reputation", "show", "--json").out)
    assert {n["node"] for n in data["nodes"]} >= {NODE}
    assert isinstance(next(n for n in data["nodes"] if n["banned_until"])["banned_until"],
                      float)


def test_spend(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    log = SpendLog(tmp_path / "gateway" / "spend.sqlite")
    for i, amount in enumerate((1_500_000, 250)):
        log.add(SpendRow(f"r{i}", "tiny-model-with-a-long-name", NODE, 10, 5, amount,
                         1.0, 2.0, "ok"))
    log.close()
    for by in ("model", "node", "day"):
        out = cli("spend", "--by", by).out
        fits(out)
        assert "1.50025" in out and "1500250" not in out, out
    assert NODE in cli("spend", "--by", "node").out.splitlines()
    assert "1500250" in cli("spend", "--base-units").out
    data = json.loads(cli("spend", "--json").out)
    assert data["total"] == 1_500_250 and data["spend"][0]["amount"] == 1_500_250


class _Gateway(BaseHTTPRequestHandler):
    """What a gateway's ``/agoranet/nodes`` answers (the rendering is what is tested)."""

    body = json.dumps({"nodes": [{
        "url": NODE, "models": ["tiny", "tiny:adapter-0123456789abcdef"],
        "price": {"tiny": {"input_per_million": 250_000, "output_per_million": 1_000_000}},
        "ttft_ms": 12.5, "tokens_per_s": 310.0, "successes": 12, "failures": 1,
        "banned": True, "offer_error": None, "ban_reason": "failed 1 audit of tiny",
        "score": 0.5, "audits_passed": 3, "audits_failed": 1, "tokens_audited": 480,
        "last_verdict": "failed"}],
        "audits": {"model": "tiny", "spent": 1500, "allowance": 50_000, "budget_share": 0.05,
                   "floor": 10_000, "skipped": 0}}).encode()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_nodes(gateway: str, cli) -> None:  # type: ignore[no-untyped-def]
    out = cli("nodes", "--gateway", gateway).out
    fits(out)
    assert NODE in out.splitlines() and "0.25/1.00" in out and "banned" in out
    assert "250000" not in out
    wide = cli("nodes", "--gateway", gateway, "--wide").out
    assert "failed 1 audit of tiny" in wide and "310" in wide
    assert "250000/1000000" in cli("nodes", "--gateway", gateway, "--base-units").out
    data = json.loads(cli("nodes", "--gateway", gateway, "--json").out)
    assert data["nodes"][0]["price"]["tiny"]["input_per_million"] == 250_000


def test_adapter_show(house_adapter: Path, cli) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(cli("adapter", "show", str(house_adapter), "--json").out)
    adapter_id = data["id"]
    assert len(adapter_id) >= 32 and adapter_id in data["model"]
    out = cli("adapter", "show", str(house_adapter)).out
    fits(out)
    lines = out.splitlines()
    assert adapter_id in lines and data["model"] in lines  # whole, each on its own line


@pytest.fixture(scope="module")
def dev() -> Iterator[DevChain]:
    if ANVIL_MISSING:
        pytest.skip(ANVIL_MISSING)
    with start_devchain() as chain:
        yield chain


def test_registry_list(dev: DevChain, cli,  # type: ignore[no-untyped-def]
                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHAIN_ID", "STABLECOIN", "ESCROW", "COLLECTOR", "REGISTRY"):
        monkeypatch.delenv(f"AGORANET_CHAIN_{name}", raising=False)
    provider = Account.from_key(dev.private_keys[5])
    registry_at(dev.rpc_url).register(provider, NODE, "0x" + "cd" * 32)
    out = cli("registry", "list", "--rpc-url", dev.rpc_url).out
    fits(out)
    lines = out.splitlines()
    assert provider.address in lines and NODE in lines
    assert re.search(r"20\d\d-\d\d-\d\d \d\d:\d\d", out)
    assert "cd" * 32 in cli("registry", "list", "--rpc-url", dev.rpc_url, "--wide").out
    data = json.loads(cli("registry", "list", "--rpc-url", dev.rpc_url, "--json").out)
    entry = next(e for e in data if e["provider"] == provider.address)
    assert entry["url"] == NODE and isinstance(entry["updated_at"], int)
