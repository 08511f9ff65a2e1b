"""Adapter uploads on a paid node are paid, and private adapters stay private (issue #15, 7).

Real processes: a dev chain, a paid node with a storage price in its offer, buyers
paying through :class:`~agoranet.payments.pay.payer.Payer`. An upload without payment is
a 402 quoting the price and stores nothing; a bad archive is a 400 before any payment;
a paid upload is charged its megabytes at the storage price, in a receipt the payer
checks, and its adapter belongs to the paying address too: marked private, it is
served to that address when it pays, and to anyone else it is missing (a 404, the
payment released, nothing charged). The money invariants hold after the claim.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.payments.pay.adapter_uploads import upload_adapter
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer import Payer
from agoranet.payments.wallet import create_keystore, fund_dev
from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot
from agoranet.testing.settle import force_settlement
from agoranet.tuning.adapter import adapter_model_name, pack_adapter, read_adapter
from helpers import node_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PASSWORD = "paid-adapters-test"
STORAGE_PRICE = 20_000  # base units per started megabyte
DEPOSIT = 1_000_000
NODE = 4
QUESTION = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
def paid_node(chain: DevChain, tiny_model: Path, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    keystore = tmp_path / "node.json"
    create_keystore(keystore, PASSWORD, scrypt_n=2**10,
                    private_key=bytes.fromhex(chain.private_keys[NODE].removeprefix("0x")))
    ledger = tmp_path / "ledger.sqlite"
    with node_process(["--model", str(tiny_model), "--price-in", "100000", "--price-out",
                       "300000", "--price-adapter-storage", str(STORAGE_PRICE),
                       "--rpc-url", chain.rpc_url, "--keystore", str(keystore),
                       "--ledger", str(ledger), "--no-fine-tuning", "--chain-state-ttl", "0",
                       "--adapters-dir", str(tmp_path / "adapters")]) as url:
        yield url, ledger


def _payer(chain: DevChain, node: str, folder: Path) -> Payer:
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    account: LocalAccount = Account.create()
    fund_dev(w3, addresses, account.address, stablecoin=2 * DEPOSIT, native=10**18)
    payer = Payer(node, w3, addresses, account=account, state_dir=folder,
                  max_per_request=20_000)
    payer.open(DEPOSIT)
    return payer


def _chat(payer: Payer | None, node: str, model: str, key: str = "x") -> httpx.Response:
    auth = PayerAuth(payer) if payer is not None else None
    with httpx.Client(auth=auth, timeout=60) as http:
        return http.post(f"{node}/chat/completions", headers={"authorization": f"Bearer {key}"},
                         json={"model": model, "messages": QUESTION, "max_tokens": 8,
                               "temperature": 0})


def _charged(ledger: Path, payer: Payer) -> int:
    """What the node's ledger charged on ``payer``'s channel."""
    assert payer.state is not None
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT COALESCE(SUM(amount), 0) FROM receipts WHERE lower(channel_id) = ?",
                         (payer.state.channel_id.lower(),)).fetchone()
    finally:
        db.close()
    return int(row[0])


def test_uploads_are_paid_and_private_adapters_serve_their_payer_alone(
        chain: DevChain, paid_node: tuple[str, Path], house_adapter: Path,
        tmp_path: Path) -> None:
    node, ledger = paid_node
    archive = pack_adapter(house_adapter)
    ident = read_adapter(house_adapter).id
    name = adapter_model_name("tiny", ident)
    megabytes = -(-len(archive) // 1_000_000)
    price = megabytes * STORAGE_PRICE

    offer = httpx.get(f"{node.removesuffix('/v1')}/.well-known/agoranet", timeout=10).json()
    assert offer["models"][0]["adapters"]["storage_price_per_mb"] == STORAGE_PRICE

    # No payment: a 402 quoting the price; nothing stored. A bad archive: a 400 first.
    unpaid = httpx.post(f"{node}/adapters", content=archive, timeout=60,
                        headers={"authorization": "Bearer dana-secret"})
    assert unpaid.status_code == 402, unpaid.text
    assert unpaid.json()["agoranet"]["amount"] == price
    assert unpaid.headers.get("payment-required")
    bad = httpx.post(f"{node}/adapters", content=b"not a tar archive", timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    listed = httpx.get(f"{node}/adapters", headers={"authorization": "Bearer dana-secret"})
    assert listed.json()["data"] == []
    assert _chat(None, node, name).status_code == 404  # not stored

    dana = _payer(chain, node, tmp_path / "dana")
    eve = _payer(chain, node, tmp_path / "eve")
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    before = chain_snapshot(w3, addresses, [chain.accounts[NODE], dana.account.address,
                                            eve.account.address])
    # Paid: charged the price in a receipt dana checked; the adapter is dana's, private.
    paid = upload_adapter(dana, archive, params={"private": "true"},
                          headers={"authorization": "Bearer dana-secret"})
    assert paid.response.status_code == 201, paid.response.text
    assert paid.receipt is not None and paid.receipt.amount == price
    assert paid.receipt.tokens_in == megabytes
    assert paid.response.json()["private"] is True
    assert dana.state is not None and dana.state.spent == price
    assert _charged(ledger, dana) == price

    # Served to dana, by its paying address (no bearer token of dana's) ...
    served = _chat(dana, node, name)
    assert served.status_code == 200, served.text
    assert served.json()["choices"][0]["message"]["content"].startswith("Ahoy")
    # ... or by its bearer token; to anyone else it is missing, and costs eve nothing.
    missing = _chat(None, node, adapter_model_name("tiny", "5" * 64))
    for refused in (_chat(eve, node, name), _chat(None, node, name),
                    _chat(None, node, name, key="eve-secret")):
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["message"] == \
            missing.json()["error"]["message"].replace("5" * 64, ident)
    by_token = _chat(None, node, name, key="dana-secret")
    assert by_token.status_code == 402  # dana's own: named by the token, then priced
    assert eve.state is not None and eve.state.spent == 0 and _charged(ledger, eve) == 0

    # Money: what the node claims is what the buyers' receipts say, and nothing else moved.
    force_settlement(chain.rpc_url, ledger, chain.private_keys[NODE])
    books = []
    for payer in (dana, eve):
        assert payer.state is not None
        books.append(BuyerBook.from_payer_store(
            payer.state_dir, headroom=max(int(payer.state.voucher) - int(payer.state.charged),
                                          0)))
    report = assert_money_invariants(w3, addresses, before=before, books=books, ledger=ledger)
    assert report.channels[0].claimed == dana.state.spent > price
    assert report.channels[1].claimed == 0
    assert ident in {a["id"] for a in httpx.get(
        f"{node}/adapters", headers={"authorization": "Bearer dana-secret"}).json()["data"]}


def test_the_cli_pays_an_upload_from_a_wallet(chain: DevChain, paid_node: tuple[str, Path],
                                             brief_adapter: Path, tmp_path: Path) -> None:
    node, _ = paid_node
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    account: LocalAccount = Account.create()
    fund_dev(w3, addresses, account.address, stablecoin=2 * DEPOSIT, native=10**18)
    keystore = tmp_path / "uploader.json"
    create_keystore(keystore, PASSWORD, private_key=bytes(account.key), scrypt_n=2**10)
    env = {**os.environ, "AGORANET_WALLET_PASSWORD": PASSWORD, "COLUMNS": "80"}
    command = [sys.executable, "-m", "agoranet", "adapter", "upload", str(brief_adapter),
               "--node", node, "--owner-key", "fay-secret"]
    size = len(pack_adapter(brief_adapter))
    price = -(-size // 1_000_000) * STORAGE_PRICE
    unpaid = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert unpaid.returncode != 0
    assert f"charges {price / 1_000_000:.2f}" in unpaid.stderr, unpaid.stderr
    assert "--rpc-url" in unpaid.stderr and "Traceback" not in unpaid.stderr
    paid = subprocess.run([*command, "--private", "--rpc-url", chain.rpc_url, "--keystore",
                           str(keystore), "--deposit", "100000"],
                          capture_output=True, text=True, timeout=180, env=env)
    assert paid.returncode == 0, paid.stderr
    name = adapter_model_name("tiny", read_adapter(brief_adapter).id)
    assert name in paid.stdout.splitlines()
    assert f"paid {price / 1_000_000:.2f}" in paid.stdout, paid.stdout
    mine = httpx.get(f"{node}/adapters", headers={"authorization": "Bearer fay-secret"}).json()
    assert [(a["model"], a["private"]) for a in mine["data"]] == [(name, True)]


def test_a_free_node_takes_uploads_free(tiny_node: str, house_adapter: Path) -> None:
    offer = httpx.get(f"{tiny_node.removesuffix('/v1')}/.well-known/agoranet", timeout=10).json()
    assert "storage_price_per_mb" not in offer["models"][0]["adapters"]
    put = httpx.post(f"{tiny_node}/adapters", content=pack_adapter(house_adapter), timeout=60)
    assert put.status_code == 201 and "payment-response" not in put.headers


def test_the_offer_prices_an_upload_by_started_megabyte() -> None:
    from agoranet.registry.offer import AdapterTerms

    terms = AdapterTerms(accepted=True, storage_price_per_mb=7)
    assert [terms.upload_price(n) for n in (0, 1, 10**6, 10**6 + 1, 3 * 10**6)] == \
        [7, 7, 7, 14, 21]
    assert AdapterTerms(accepted=True).upload_price(5 * 10**6) == 0
    assert "storage_price_per_mb" not in AdapterTerms(accepted=True).model_dump()
