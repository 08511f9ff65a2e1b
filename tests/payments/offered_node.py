"""A node that serves only its signed offer (no engine, no ledger): what a payer reads before it
opens a channel or signs a voucher. Its offer names an authorizer apart from its payee and a
withdraw delay above the least one, so a payer that ignored either would be seen."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agoranet.registry.offer import ModelOffer, Offer, PaymentOffer, Price
from agoranet.registry.signing import sign_offer

from .conftest import Env
from .paid_support import served

__all__ = ["AUTHORIZER", "DELAY", "NODE", "offered_node"]

DELAY = 1_800  # twice the least delay: the payer must read it from the offer
NODE: LocalAccount = Account.create()
AUTHORIZER: LocalAccount = Account.create()  # signs the node's claims; not its payee


@pytest.fixture(name="offered")  # import offered_node; ask for "offered"
async def offered_node(env: Env) -> AsyncIterator[str]:
    """The node's root URL. Its model "fake": 1000 a prompt token, 2000 an answer's, a
    context of 64 tokens."""
    offer = sign_offer(Offer(
        engine="hf", models=[ModelOffer(id="fake", context_length=64, price=Price(
            input_per_million=1_000_000_000, output_per_million=2_000_000_000))],
        payment=PaymentOffer(
            schemes=["batch-settlement"], network=f"eip155:{env.dev.chain_id}",
            asset=env.addresses.require_stablecoin(), pay_to=NODE.address,
            receiver_authorizer=AUTHORIZER.address, withdraw_delay=DELAY, min_deposit=0,
            token_name="USD Coin", token_version="2")), NODE)

    async def serve(request: Request) -> Response:
        return Response(offer.model_dump_json(), media_type="application/json")

    async with served(Starlette(routes=[Route("/.well-known/agoranet", serve)])) as url:
        yield url
