"""An in-process paid node on the dev chain, and hand-made x402 payments for attacks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequirements

from agoranet.chain import compile_contract
from agoranet.config import NodeSettings
from agoranet.engines.base import Delta, Finish, Prepared, StreamEvent
from agoranet.node.app import create_app
from agoranet.node.payment_setup import NodePayments, build_payments
from agoranet.payments import x402wire
from agoranet.payments.channels import new_config, open_channel
from fakes import FakeEngine
from helpers import served as served  # the payment tests take it from here

PRICE_IN = 1_000_000_000  # 1000 base units per prompt token
PRICE_OUT = 2_000_000_000  # 2000 per completion token
BODY = {"model": "fake", "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 5}
WORST = 3 * 1000 + 5 * 2000  # 13000


def paid_chat_scope(request_id: str, payment: str) -> Scope:
    """The ASGI scope of a chat completion POSTed to a node, paid with ``payment``."""
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions",
            "scheme": "http", "query_string": b"", "root_path": "", "http_version": "1.1",
            "server": ("node", 80), "client": ("127.0.0.1", 5),
            "headers": [(b"host", b"node"), (b"content-type", b"application/json"),
                        (b"x-request-id", request_id.encode()),
                        (x402wire.PAYMENT_SIGNATURE.lower().encode(), payment.encode())]}


def body_then_disconnect(body: bytes, gone: asyncio.Event) -> Receive:
    """An ASGI ``receive``: the whole ``body`` at once, then a disconnect once ``gone``."""
    first = True

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


class CountingEngine(FakeEngine):
    """The fake engine, counting how many generations it started."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.calls = 0

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        return super().stream(prepared)


def paid_settings(rpc_url: str, ledger: Path, **kw: Any) -> NodeSettings:
    return NodeSettings(price_in=PRICE_IN, price_out=PRICE_OUT, rpc_url=rpc_url,
                        ledger_path=ledger, chain_state_ttl=kw.pop("chain_state_ttl", 0.2),
                        **kw)


def node_payments(rpc_url: str, ledger: Path, account: LocalAccount, **kw: Any) -> NodePayments:
    return build_payments(paid_settings(rpc_url, ledger, **kw), account)


@dataclass
class Channel:
    config: ChannelConfig
    channel_id: str
    key: LocalAccount
    network: str


def open_test_channel(env: Any, payer: LocalAccount, node: str, deposit: int,
                      **overrides: Any) -> Channel:
    config = new_config(env.addresses, payer=payer.address, receiver=node,
                        payer_authorizer=payer.address)
    if overrides:
        config = ChannelConfig.from_dict({**config.to_dict(), **overrides})
    if deposit:
        open_channel(env.w3, env.addresses, payer, config, deposit)
    return Channel(config, compute_channel_id(config, env.dev.chain_id), payer, env.dev.network)


def other_token(env: Any, holder: str, amount: int) -> str:
    """A second ERC-3009 stablecoin on the dev chain (not the node's), ``amount`` minted to
    ``holder``, so a channel in another token can really be funded."""
    compiled = compile_contract("Stablecoin")
    deployer = env.dev.accounts[0]  # unlocked in anvil
    factory = env.w3.eth.contract(abi=compiled.abi, bytecode=compiled.bytecode)
    receipt = env.w3.eth.wait_for_transaction_receipt(
        factory.constructor().transact({"from": deployer}), timeout=30)
    token = env.w3.eth.contract(address=receipt["contractAddress"], abi=compiled.abi)
    env.w3.eth.wait_for_transaction_receipt(
        token.functions.mint(holder, amount).transact({"from": deployer}), timeout=30)
    return str(receipt["contractAddress"])


def header(channel: Channel, voucher: int, max_amount: int, node: str, asset: str, *,
           key: LocalAccount | None = None, network: str | None = None,
           channel_id: str | None = None,
           mutate: Callable[[bytes], bytes] | None = None) -> str:
    """A voucher payment for ``channel``; ``mutate`` rewrites the signature's bytes."""
    network = network or channel.network
    cid = channel_id or channel.channel_id
    fields = sign_voucher(EthAccountSigner(key or channel.key), cid, voucher, network)
    if mutate is not None:
        raw = bytes.fromhex(fields.signature.removeprefix("0x"))
        fields.signature = "0x" + mutate(raw).hex()
    accepted = PaymentRequirements(
        scheme="batch-settlement", network=network, asset=asset, amount=str(max_amount),
        pay_to=node, max_timeout_seconds=3600,
        extra={"receiverAuthorizer": node, "withdrawDelay": 900})
    payload = PaymentPayload(payload={"type": "voucher", "channelConfig": channel.config.to_dict(),
                                      "voucher": fields.to_dict()}, accepted=accepted)
    return x402wire.encode_model(payload)


class ShortEngine(CountingEngine):
    """Stops after ``words`` tokens (``stop``), so a request costs less than its worst case."""

    def __init__(self, words: int = 3, **kw: Any) -> None:
        super().__init__(**kw)
        self.words = words

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        return self.scheduler.run(_ShortJob(prepared, self.words))


class _ShortJob:
    def __init__(self, prepared: Prepared, words: int) -> None:
        self.prepared, self.words, self.sent = prepared, words, 0

    def step(self) -> list[StreamEvent]:
        self.sent += 1
        events: list[StreamEvent] = [Delta(f"w{self.sent} ")]
        limit = min(self.words, self.prepared.request.max_tokens)
        if self.sent >= limit:
            reason = "stop" if limit < self.prepared.request.max_tokens else "length"
            events.append(Finish(reason, self.prepared.prompt_tokens, self.sent))
        return events


E = TypeVar("E", bound=FakeEngine)


@dataclass
class InProcessNode(Generic[E]):
    """A paid node's app on the dev chain, driven in process (its code is the test's)."""

    app: Starlette
    engine: E
    payments: NodePayments
    address: str
    asset: str


@contextmanager
def in_process_node(env: Any, folder: Path, engine: E) -> Iterator[InProcessNode[E]]:
    """A paid node serving ``engine`` with its ledger in ``folder`` (the dev chain's third
    account is its wallet); its payments are closed on exit."""
    account: LocalAccount = Account.from_key(env.dev.private_keys[2])
    ledger = folder / "ledger.sqlite"
    payments = node_payments(env.dev.rpc_url, ledger, account)
    app = create_app(engine, paid_settings(env.dev.rpc_url, ledger), None, payments)
    try:
        yield InProcessNode(app, engine, payments, account.address,
                            env.addresses.require_stablecoin())
    finally:
        payments.close()


@asynccontextmanager
async def asgi_client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield client
