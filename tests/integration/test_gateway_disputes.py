"""#12: a node that overcharges through resync, against a real gateway on the dev chain.

The cheating node (``python -m agoranet.testing node --cheat-payments resync``) marks each request's
whole voucher as charged and answers the gateway's next voucher with a corrective
402. The gateway believes no total that no receipt backs: it counts what the node
can claim as disputed spend (budget and spend log), bans the node for long, fails
over to an honest node, and the node's claim on chain stays within the receipts
plus one request's headroom.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from agoranet.chain.devchain import DevChain
from agoranet.gateway.spendlog import SpendLog
from agoranet.node.launcher import running_command
from agoranet.payments.wallet import create_keystore
from helpers import node_process, rigged_node_process

pytestmark = pytest.mark.slow

PASSWORD = "gateway-dispute-test"
QUESTION = [{"role": "user", "content": "Tell me about the river."}]
COMMON = ["--no-fine-tuning", "--no-adapters", "--settle-interval", "0.3",
          "--claim-max-age", "0"]


def _keystore(chain: DevChain, index: int, path: Path) -> str:
    key = bytes.fromhex(chain.private_keys[index].removeprefix("0x"))
    create_keystore(path, PASSWORD, private_key=key, scrypt_n=2**10)
    return str(path)


def _claimed(chain: DevChain, channel_id: str) -> int:
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.payments.channels import escrow_contract

    escrow = escrow_contract(chain.web3(), resolve_addresses(chain.chain_id))
    return int(escrow.functions.channels(bytes.fromhex(channel_id[2:])).call()[1])


def test_a_node_claiming_unreceipted_charges_is_counted_banned_and_left(
        chain: DevChain, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agoranet.payments.pay.payer_store import PayerStore

    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    spend_path = tmp_path / "gw" / "spend.sqlite"
    model = ["--model", str(tiny_model), "--rpc-url", chain.rpc_url, *COMMON]
    with ExitStack() as stack:
        cheat = stack.enter_context(rigged_node_process([
            *model, "--price-in", "100000", "--price-out", "300000",
            "--keystore", _keystore(chain, 3, tmp_path / "cheat.json"),
            "--ledger", str(tmp_path / "cheat.sqlite"), "--cheat-payments", "resync"]))
        honest = stack.enter_context(node_process([
            *model, "--price-in", "200000", "--price-out", "600000",
            "--keystore", _keystore(chain, 4, tmp_path / "honest.json"),
            "--ledger", str(tmp_path / "honest.sqlite")]))
        gateway = stack.enter_context(running_command([
            "gateway", "--open", "--rpc-url", chain.rpc_url,
            "--keystore", _keystore(chain, 5, tmp_path / "gw.json"),
            "--deposit", "500000", "--budget", "400000", "--spend-log", str(spend_path),
            "--node", cheat, "--node", honest]))
        client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
        served_by = []
        for _ in range(5):
            reply = client.chat.completions.create(
                model="tiny", messages=QUESTION, max_tokens=16,
                extra_body={"agoranet": {"prefer": "cheapest"}})
            assert reply.choices[0].message.content
            served_by.append(reply.model_extra["agoranet"]["nodes"])  # type: ignore[index]
        status = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=10).json()
        # the cheat's channel, from the gateway's payer stores
        stores = [PayerStore(p.parent) for p in (tmp_path / "gw" / "channels")
                  .rglob("payer.sqlite")]
        states = {store: store.load() or {} for store in stores}
        store, state = next((s, st) for s, st in states.items()
                            if st.get("dispute"))
        receipts = store.receipts()
        deadline = time.monotonic() + 30  # the cheat claims its inflated total on its own
        claimed = 0
        while time.monotonic() < deadline and claimed == 0:
            claimed = _claimed(chain, state["channel_id"])
            time.sleep(0.3)
        for s in stores:
            s.close()

    assert served_by[0] == [cheat] and all(nodes == [honest] for nodes in served_by[1:])
    rows = SpendLog(spend_path).rows()
    on_cheat = [r for r in rows if r.node == cheat]
    assert [r.outcome for r in on_cheat] == ["ok", "disputed"]
    held = sum(r.amount for r in receipts)
    assert on_cheat[0].amount == held > 0 and on_cheat[0].receipt is not None
    headroom = state["voucher"] - state["charged"]  # the refused request's voucher, signed
    assert on_cheat[1].amount == state["disputed"] == headroom > 0
    assert on_cheat[1].receipt is None
    # the money invariants, on chain
    assert 0 < claimed <= held + headroom
    assert sum(r.amount for r in on_cheat) >= claimed
    budget = status["budget"]
    assert budget["spent"] == sum(r.amount for r in rows) and budget["reserved"] == 0
    row = next(n for n in status["nodes"] if n["url"] == cheat)
    assert row["banned"] and "no receipt backs" in row["ban_reason"]
    assert row["receipt_disagreements"] >= 1 and row["banned_until"] > time.time() + 86_400
