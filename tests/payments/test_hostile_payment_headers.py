"""Malformed payments and bodies against a paid node (issue #12, defect 4).

Each case used to end in a 500 with a traceback in the log: a ``channelConfig`` of
the wrong type or length, malformed ``exact`` payloads, a junk ``deposit`` on an
unfunded self-signed channel, an ``accepted.amount`` of 2^63 or more, an integer
of more than 4,300 digits in the body. Each must now be a 400/402 in OpenAI's
error JSON, run no inference, and leave the ledger as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.node.app import create_app
from agoranet.payments import x402wire

from .conftest import Env
from .paid_support import (
    BODY,
    CountingEngine,
    header,
    node_payments,
    open_test_channel,
    paid_settings,
)
from .support import needs_anvil

pytestmark = needs_anvil

ALLOWANCE = 20_000


@pytest.fixture(scope="module")
def paid(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    account: LocalAccount = Account.from_key(env.dev.private_keys[2])
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account)
    engine = CountingEngine(delay=0.0, max_active=4, max_queue=16)
    app = create_app(engine, paid_settings(env.dev.rpc_url, ledger), None, payments)
    yield app, engine, payments, account.address, env.addresses.require_stablecoin()
    payments.close()


def mutated(pay: str, change: Callable[[dict[str, Any]], None]) -> str:
    data = x402wire.decode_json(pay, "x")
    change(data)
    return x402wire.encode_json(data)


def setter(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return change


def exact(payload: Any, amount: str = str(ALLOWANCE)) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["accepted"]["scheme"] = "exact"
        data["accepted"]["amount"] = amount
        data["accepted"]["extra"] = {"name": "USDC", "version": "2"}
        data["payload"] = payload
    return change


def cases(pay: str, unfunded: str) -> dict[str, str]:
    cfg = ("payload", "channelConfig")
    voucher = ("payload", "voucher")
    auth = {"from": "0x" + "11" * 20, "to": "0x" + "22" * 20, "value": "20000",
            "validAfter": "0", "validBefore": "99999999999", "nonce": "0x" + "33" * 32}
    found = {
        "channelConfig a string": setter(*cfg, value="config"),
        "channelConfig a list": setter(*cfg, value=[1, 2]),
        "channelConfig a number": setter(*cfg, value=7),
        "channelConfig null": setter(*cfg, value=None),
        "channelConfig empty": setter(*cfg, value={}),
        "receiver too short": setter(*cfg, "receiver", value="0x12"),
        "receiver not hex": setter(*cfg, "receiver", value="0x" + "zz" * 20),
        "receiver a number": setter(*cfg, "receiver", value=12),
        "payer too long": setter(*cfg, "payer", value="0x" + "11" * 40),
        "payerAuthorizer a list": setter(*cfg, "payerAuthorizer", value=["0x"]),
        "salt too short": setter(*cfg, "salt", value="0x01"),
        "salt too long": setter(*cfg, "salt", value="0x" + "01" * 64),
        "salt not hex": setter(*cfg, "salt", value="salt"),
        "withdrawDelay a word": setter(*cfg, "withdrawDelay", value="soon"),
        "withdrawDelay huge": setter(*cfg, "withdrawDelay", value=str(2**300)),
        "withdrawDelay negative": setter(*cfg, "withdrawDelay", value=-1),
        "token a dict": setter(*cfg, "token", value={"a": 1}),
        "voucher a string": setter(*voucher, value="v"),
        "channelId short": setter(*voucher, "channelId", value="0x12"),
        "channelId a number": setter(*voucher, "channelId", value=5),
        "signature a number": setter(*voucher, "signature", value=5),
        "signature short": setter(*voucher, "signature", value="0x1234"),
        "amount a list": setter(*voucher, "maxClaimableAmount", value=[1]),
        "amount 2^63": setter(*voucher, "maxClaimableAmount", value=str(2**63)),
        "payload a list": setter("payload", value=[1]),
        "accepted.amount 2^63": setter("accepted", "amount", value=str(2**63)),
        "accepted.amount 2^64": setter("accepted", "amount", value=str(2**64)),
        "accepted.amount 2^256": setter("accepted", "amount", value=str(2**256)),
        "accepted.amount 5000 digits": setter("accepted", "amount", value="9" * 5000),
        "accepted.amount negative": setter("accepted", "amount", value="-5"),
        "exact empty payload": exact({}),
        "exact authorization a string": exact({"authorization": "x", "signature": "0x"}),
        "exact authorization empty": exact({"authorization": {}, "signature": "0x12"}),
        "exact value a word": exact({"authorization": {**auth, "value": "lots"},
                                     "signature": "0x" + "44" * 65}),
        "exact nonce short": exact({"authorization": {**auth, "nonce": "0x1"},
                                    "signature": "0x" + "44" * 65}),
        "exact signature a number": exact({"authorization": auth, "signature": 5}),
        "exact from not hex": exact({"authorization": {**auth, "from": "me"},
                                     "signature": "0x" + "44" * 65}),
        "exact amount 2^256": exact({"authorization": {**auth, "value": str(2**256)},
                                     "signature": "0x" + "44" * 65}, amount=str(2**256)),
    }
    out = {name: mutated(pay, change) for name, change in found.items()}

    def deposit(value: Any) -> Callable[[dict[str, Any]], None]:
        def change(data: dict[str, Any]) -> None:
            data["payload"]["type"] = "deposit"
            data["payload"]["deposit"] = value
        return change

    for name, value in {"junk": "junk", "empty": {}, "a list": [1],
                        "amount a word": {"amount": "lots", "authorization": {}},
                        "bad authorization": {"amount": "100000", "authorization": {
                            "erc3009Authorization": {"validAfter": "x", "salt": 5,
                                                     "signature": "0x"}}}}.items():
        out[f"deposit {name}"] = mutated(unfunded, deposit(value))
    return out


async def test_malformed_payments_are_402_not_500(paid: Any, env: Env,
                                                  payer: LocalAccount) -> None:
    app, engine, payments, node, asset = paid
    channel = open_test_channel(env, payer, node, 100_000)
    unfunded = open_test_channel(env, payer, node, 0)
    pay = header(channel, ALLOWANCE, ALLOWANCE, node, asset)
    self_signed = header(unfunded, ALLOWANCE, ALLOWANCE, node, asset)
    ledger = payments.ledger
    wrong = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://node", timeout=30) as client:
        for name, value in cases(pay, self_signed).items():
            response = await client.post("/v1/chat/completions", json=BODY,
                                         headers={x402wire.PAYMENT_SIGNATURE: value})
            body = response.json() if response.headers.get("content-type", "").startswith(
                "application/json") else {}
            if response.status_code not in (400, 402) or not body.get("error", {}).get("message"):
                wrong.append((name, response.status_code, response.text[:200]))
            elif "Traceback" in response.text:
                wrong.append((name, "traceback", response.text[:200]))
        assert not wrong, "\n".join(f"{n}: {s} {t[:80]}" for n, s, t in wrong)
        assert engine.calls == 0
        assert ledger.channel(channel.channel_id) is None or \
            ledger.channel(channel.channel_id).charged == 0
        # the honest voucher still works after all that
        ok = await client.post("/v1/chat/completions", json=BODY,
                               headers={x402wire.PAYMENT_SIGNATURE: pay})
        assert ok.status_code == 200, ok.text
        assert ledger.channel(channel.channel_id).charged > 0


async def test_huge_integers_in_the_body_are_400(paid: Any) -> None:
    app, engine, _, _, _ = paid
    raw = json.dumps(BODY)
    bodies = {
        "max_tokens 5000 digits": raw.replace('"max_tokens": 5', '"max_tokens": ' + "9" * 5000),
        "max_tokens 4000 digits": raw.replace('"max_tokens": 5', '"max_tokens": ' + "9" * 4000),
        "seed 4400 digits": raw[:-1] + ', "seed": ' + "1" * 4400 + "}",
        "nested 100,000 deep": "[" * 100_000 + "]" * 100_000,
    }
    calls = engine.calls
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://node") as client:
        for name, content in bodies.items():
            response = await client.post("/v1/chat/completions", content=content,
                                         headers={"content-type": "application/json"})
            assert response.status_code == 400, (name, response.status_code, response.text[:300])
            assert response.json()["error"]["type"] == "invalid_request_error", name
    assert engine.calls == calls
