"""The gateway buys from a tool server that takes only ``exact``, on the dev chain.

``agoranet tools serve agoranet.testing.tool_kit:tools --schemes exact`` (paid to dev
account 3) offers ``exact`` alone; a keyed gateway with a wallet (account 5) pays it one
EIP-3009 transfer a call from that wallet, under the calling key's budget:

- ``echo`` (fixed price) and ``count`` (quoted by the seller) are bought; each answer's
  receipt is signed by the seller for the gateway's request id and one transfer (its
  nonce, used on chain), and the spend log (per key and seller), the seller's signed
  receipts and its log, and the token moved on chain agree to the base unit;
- a key whose budget is below the price is refused before anything is signed: no
  transfer, no spend row.

And a seller that names calls itself (``agoranet.testing.tool_cheats``'s
``own-request-ids``: its receipts are signed and in step, but for another request than
the ``x-request-id`` the gateway sent) has its receipt refused: the voucher counts as
spent, it is recorded as a receipt disagreement, and the honest seller answers.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from test_tool_market import (
    _folder,
    _key,
    _listed,
    _owner,
    _rows,
    _wait_listed,
    dev,
    gateway_args,
)

from agoranet.node.launcher import running_command
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore, stablecoin_contract
from agoranet.registry.tool_offer import ToolOffer
from agoranet.testing.tool_cheats import CHEAP_ECHO_PRICE, CHEAT_ENV
from agoranet.testing.tool_kit import ECHO_PRICE, PER_CHAR
from helpers import logged
from tools.support import PASSWORD, Chain, ledger_receipts, serve_tools, token_balance

__all__ = ["dev", "gateway_args"]  # (fixtures shared with test_tool_market)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _call(root: str, key: str, name: str, arguments: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{root}/agoranet/tools/call", headers={"Authorization": f"Bearer {key}"},
                      timeout=60, json={"name": name, "arguments": arguments})


def test_a_seller_taking_only_exact_is_paid_by_transfer(dev: Chain, tmp_path: Path,
                                                        gateway_args: list[str]) -> None:
    wallet = Account.from_key(dev.dev.private_keys[5]).address
    with ExitStack() as stack:
        seller = stack.enter_context(serve_tools(
            dev, _folder(tmp_path, "exact"),
            ["agoranet.testing.tool_kit:tools", "--schemes", "exact"], key_index=3))
        offer = ToolOffer.model_validate(
            httpx.get(f"{seller.root}/.well-known/agoranet", timeout=30).json())
        assert offer.payment is not None and offer.payment.schemes == ["exact"]
        url = stack.enter_context(running_command(
            [*gateway_args, "--tools", seller.root], output=tmp_path / "gateway.log"))
        root = url.removesuffix("/v1")
        owner = _owner(tmp_path)
        _wait_listed(root, owner, lambda data: any(
            t["name"] == "echo" and t["sellers"][0]["schemes"] == ["exact"] for t in data),
            "listed the exact seller")
        agent = _key(root, owner, "agent", 5_000)
        poor = _key(root, owner, "poor", ECHO_PRICE - 1)
        spend_log = tmp_path / "gw" / "spend.sqlite"
        before = (token_balance(dev, wallet), token_balance(dev, seller.seller.address))

        refused = _call(root, poor, "echo", {"text": "x"})
        assert refused.status_code == 429 and "insufficient_quota" in refused.text
        assert (token_balance(dev, wallet), token_balance(dev, seller.seller.address)) == before
        assert _rows(spend_log) == []

        answers = []
        for name, arguments, price in (("echo", {"text": "hi", "times": 2}, ECHO_PRICE),
                                       ("count", {"text": "hello world"}, PER_CHAR * 11)):
            reply = _call(root, agent, name, arguments)
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            assert answer["cost"] == price and answer["seller"] == seller.root
            answers.append(answer)
        assert answers[0]["result"] == {"result": "hihi"}
        assert answers[1]["result"] == {"words": 2, "characters": 11}
        log = logged(tmp_path / "exact" / "tools.log",
                     lambda text: len(re.findall(rf"{wallet}\s+paid \d+ \(exact\)", text,
                                                 re.I)) >= len(answers),
                     "a 'paid N (exact)' line for each call")

    total = ECHO_PRICE + PER_CHAR * 11
    usdc = stablecoin_contract(dev.w3, dev.addresses)
    receipts = []
    for answer in answers:
        receipt = Receipt.from_json(answer["receipt"])
        verify_receipt(receipt, seller.seller.address)  # signed by the seller
        assert receipt.request_id == answer["id"]  # for the gateway's request id
        assert receipt.amount == receipt.cumulative == answer["cost"]
        # the receipt's channel is the transfer's nonce, used on chain by our wallet
        assert usdc.functions.authorizationState(
            wallet, bytes.fromhex(receipt.channel_id[2:])).call()
        receipts.append(receipt)
    rows = _rows(spend_log)
    assert [(r.key, r.node, r.outcome) for r in rows] == [("agent", seller.root, "ok")] * 2
    assert [r.amount for r in rows] == [r.amount for r in receipts]
    assert [json.loads(r.receipt)["requestId"] for r in rows] == [a["id"] for a in answers]
    # the seller's own record: one "paid N (exact)" line a call, from our wallet
    sold = [int(n) for n in re.findall(rf"{wallet}\s+paid (\d+) \(exact\)", log, re.I)]
    assert sold == [r.amount for r in receipts]
    # on chain, to the base unit: what left the wallet reached the seller, and was logged
    assert token_balance(dev, wallet) == before[0] - total
    assert token_balance(dev, seller.seller.address) == before[1] + total
    assert sum(r.amount for r in rows) == sum(sold) == total


def test_a_receipt_for_another_request_is_refused(dev: Chain, tmp_path: Path,
                                                  gateway_args: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cheat_folder, honest_folder = _folder(tmp_path, "cheat"), _folder(tmp_path, "honest")
    keystore = cheat_folder / "keystore.json"
    create_keystore(keystore, PASSWORD, private_key=bytes.fromhex(
        dev.dev.private_keys[7].removeprefix("0x")), scrypt_n=2**10)
    monkeypatch.setenv(PASSWORD_ENV_VAR, PASSWORD)
    monkeypatch.setenv(CHEAT_ENV, "own-request-ids")
    with ExitStack() as stack:
        cheat = stack.enter_context(running_command(
            ["-v", "tools", "serve", "agoranet.testing.tool_cheats:cheap", "--rpc-url",
             dev.dev.rpc_url, "--keystore", str(keystore), "--ledger",
             str(cheat_folder / "ledger.sqlite"), "--claim-min-amount", "1",
             "--settle-interval", "0.3"], module="agoranet.testing.tool_cheats",
            output=cheat_folder / "tools.log")).removesuffix("/v1")
        honest = stack.enter_context(serve_tools(dev, honest_folder,
                                                 ["agoranet.testing.tool_kit:tools"],
                                                 key_index=8))
        url = stack.enter_context(running_command(
            [*gateway_args, "--tools", cheat, "--tools", honest.root],
            output=tmp_path / "gateway.log"))
        root = url.removesuffix("/v1")
        owner = _owner(tmp_path)
        _wait_listed(root, owner, lambda data: any(
            t["name"] == "echo" and len(t["sellers"]) == 2 for t in data), "listed both sellers")
        agent = _key(root, owner, "agent", 5_000)
        reply = _call(root, agent, "echo", {"text": "hi"})
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["seller"] == honest.root and answer["result"] == {"result": "hi"}
        [tried] = answer["tried"]
        assert tried["seller"] == cheat and tried["charged"] == CHEAP_ECHO_PRICE
        assert "is for another request" in tried["error"]
        receipt = Receipt.from_json(answer["receipt"])
        assert receipt.request_id == answer["id"]  # the honest seller's: our request id
        rows = _rows(tmp_path / "gw" / "spend.sqlite")
        assert sorted((r.node, r.outcome, r.amount, r.key) for r in rows) == sorted([
            (cheat, "failed", CHEAP_ECHO_PRICE, "agent"),
            (honest.root, "ok", ECHO_PRICE, "agent")])
        scores = {s["url"]: s["score"] for t in _listed(root, owner) if t["name"] == "echo"
                  for s in t["sellers"]}
        assert scores[cheat] < 0.1 < 0.5 < scores[honest.root]  # a receipt disagreement
        assert ledger_receipts(honest.ledger, receipt.channel_id) == [ECHO_PRICE]
