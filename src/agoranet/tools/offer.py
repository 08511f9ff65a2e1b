"""The tool server's signed offer at ``/.well-known/agoranet``.

A :class:`~agoranet.registry.tool_offer.ToolOffer`: each tool with its name,
description, input and output schemas (and their hash) and its price -- fixed, or
varying with the arguments (at most the tool's ``max_price`` when it states one) --
and how it is paid (schemes, network, asset, payTo, channel terms), signed with the
server's key by the rules of node offers (:mod:`agoranet.registry.signing`).
"""

from __future__ import annotations

from typing import Any, Final

from eth_account.signers.local import LocalAccount

from agoranet.payments.accept.acceptor import PaymentTerms
from agoranet.registry.offer import PaymentOffer
from agoranet.registry.signing import sign_offer
from agoranet.registry.tool_offer import ToolOffer, build_tool_offer
from agoranet.tools.definition import Tool
from agoranet.tools.server import ToolServer

__all__ = ["OFFER_PATH", "payment_offer", "signed_tool_offer"]

OFFER_PATH: Final = "/.well-known/agoranet"


def payment_offer(terms: PaymentTerms) -> PaymentOffer:
    """The acceptor's terms as an offer states them."""
    return PaymentOffer(schemes=list(terms.schemes), network=terms.network, asset=terms.asset,
                        pay_to=terms.pay_to, receiver_authorizer=terms.receiver_authorizer,
                        withdraw_delay=terms.withdraw_delay, min_deposit=terms.min_deposit,
                        token_name=terms.token_name, token_version=terms.token_version)


def _price(tool: Tool) -> int | dict[str, Any]:
    if not callable(tool.price):
        return tool.price
    return {"varies": True, "max_amount": tool.max_price,
            "description": "computed from the call's arguments: an unpaid call's 402 "
                           "quotes it"}


def signed_tool_offer(server: ToolServer, terms: PaymentTerms, account: LocalAccount,
                      url: str) -> ToolOffer:
    """The offer of ``server``'s tools at root ``url``, signed with ``account``."""
    offer = build_tool_offer(url, [
        {"name": tool.name, "description": tool.description,
         "input_schema": tool.input_schema, "output_schema": tool.output_schema,
         "price": _price(tool)} for tool in server], payment_offer(terms))
    return sign_offer(offer, account)
