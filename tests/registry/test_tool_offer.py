"""Tool offers: signed like node offers, hashed for the registry, never confused with them.

- A signed offer survives its wire form (JSON) with the same signer and registry hash.
- Any change after signing (a price, a schema, the payee) breaks the signature or the
  registered hash, and ``check_offer`` refuses it; an offer signed by another key than
  the registered one (a forged signer) is refused too.
- A tool's schema hash is computed from its schemas; a stated hash that is not theirs
  fails validation, so "the same tool" across sellers can be trusted.
- A node's offer does not parse as a tool offer, nor a tool offer as a node's.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from pydantic import ValidationError

from agoranet.errors import OfferMismatchError
from agoranet.registry.offer import Offer, PaymentOffer, build_offer
from agoranet.registry.onchain import RegistryEntry, check_offer, offer_hash
from agoranet.registry.signing import offer_signer, sign_offer
from agoranet.registry.tool_offer import (
    ToolOffer,
    build_tool_offer,
    is_tool_url,
    registry_url,
    schema_hash,
    tool_root,
)

SELLER = Account.create()
ROOT = "http://tools.test:9000"
ECHO = {"name": "echo", "description": "Says it back.",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}},
                         "required": ["text"]},
        "output_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "price": 1500}
WORDS = {"name": "count_words", "description": "Counts words.",
         "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
         "price": {"varies": True, "max_amount": 9000, "description": "100 per word, at most 90"}}


def _payment(pay_to: str = SELLER.address) -> PaymentOffer:
    return PaymentOffer(schemes=["batch-settlement", "exact"], network="eip155:31337",
                        asset="0x" + "11" * 20, pay_to=pay_to,
                        receiver_authorizer="0x" + "22" * 20, withdraw_delay=900,
                        min_deposit=0, token_name="USD Coin", token_version="2")


def _signed() -> ToolOffer:
    return sign_offer(build_tool_offer(ROOT + "/", [ECHO, WORDS], _payment()), SELLER)


def _entry(offer: ToolOffer, provider: str = SELLER.address) -> RegistryEntry:
    return RegistryEntry(provider, registry_url(ROOT), offer_hash(offer), 1)


def test_round_trip_keeps_signer_and_hash() -> None:
    offer = _signed()
    wire = offer.model_dump_json()
    back = ToolOffer.model_validate_json(wire)
    assert back == offer
    assert back.kind == "tools" and back.url == ROOT
    assert offer_signer(back) == SELLER.address
    assert offer_hash(back) == offer_hash(offer)
    check_offer(back, _entry(offer))
    echo = back.tool("echo")
    assert echo is not None and echo.price.amount == 1500 and not echo.price.varies
    assert echo.schema_sha256 == schema_hash(ECHO["input_schema"], ECHO["output_schema"])  # type: ignore[arg-type]
    words = back.tool("count_words")
    assert words is not None and words.price.varies and words.output_schema is None
    assert words.price.amount is None and words.price.max_amount == 9000
    assert words.price.allows(9000) and not words.price.allows(9001)
    assert echo.price.allows(1500) and not echo.price.allows(1499)


@pytest.mark.parametrize("change", ["price", "schema", "pay_to", "new_field"])
def test_tampering_is_detected(change: str) -> None:
    offer = _signed()
    entry = _entry(offer)
    data = offer.model_dump(mode="json")
    if change == "price":
        data["tools"][0]["price"]["amount"] = 1
    elif change == "schema":
        data["tools"][0]["input_schema"]["properties"]["text"]["type"] = "number"
        data["tools"][0]["schema_sha256"] = schema_hash(data["tools"][0]["input_schema"],
                                                        data["tools"][0]["output_schema"])
    elif change == "pay_to":
        data["payment"]["pay_to"] = Account.create().address
    else:
        data["tools"][0]["price"]["description"] = "now free"
    tampered = ToolOffer.model_validate(data)
    with pytest.raises(ValueError, match="signed by"):
        offer_signer(tampered)
    with pytest.raises(OfferMismatchError):
        check_offer(tampered, entry)
    # re-registered under the tampered hash, the signature still gives it away
    with pytest.raises(OfferMismatchError, match="signed by"):
        check_offer(tampered, _entry(tampered))


def test_forged_signer_is_detected() -> None:
    forger = Account.create()
    forged = sign_offer(build_tool_offer(ROOT, [ECHO], _payment()), forger)
    assert offer_signer(forged) == forger.address  # a valid signature, by the wrong key
    with pytest.raises(OfferMismatchError, match="signed by"):
        check_offer(forged, _entry(forged, provider=SELLER.address))
    # a claimed signer that did not sign
    claimed = forged.model_copy(update={"signer": SELLER.address})
    with pytest.raises(ValueError, match="signed by"):
        offer_signer(claimed)
    with pytest.raises(OfferMismatchError):
        check_offer(claimed, _entry(claimed))
    garbled = forged.model_copy(update={"signature": "0x" + "ff" * 65})
    with pytest.raises(ValueError):
        offer_signer(garbled)
    unsigned = build_tool_offer(ROOT, [ECHO], _payment())
    with pytest.raises(OfferMismatchError, match="not signed"):
        check_offer(unsigned, _entry(unsigned))


def test_schema_hash_is_checked_and_canonical() -> None:
    a = schema_hash({"type": "object", "properties": {"x": {"type": "integer"}}}, None)
    b = schema_hash({"properties": {"x": {"type": "integer"}}, "type": "object"}, None)
    assert a == b  # key order does not matter
    assert a != schema_hash({"type": "object", "properties": {"x": {"type": "integer"}}}, {})
    data = build_tool_offer(ROOT, [ECHO], _payment()).model_dump(mode="json")
    data["tools"][0]["schema_sha256"] = "00" * 32
    with pytest.raises(ValidationError, match="schema_sha256"):
        ToolOffer.model_validate(data)


def test_offer_rules() -> None:
    with pytest.raises(ValidationError, match="twice"):
        build_tool_offer(ROOT, [ECHO, ECHO], _payment())
    with pytest.raises(ValidationError, match="payment terms"):
        build_tool_offer(ROOT, [ECHO])
    free = build_tool_offer(ROOT, [{**ECHO, "price": 0}])
    assert free.payment is None
    with pytest.raises(ValidationError):
        build_tool_offer(ROOT, [{**ECHO, "name": "has space"}])
    with pytest.raises(ValidationError):
        build_tool_offer(ROOT, [{**ECHO, "price": -1}], _payment())
    with pytest.raises(ValidationError, match="one of the two"):
        build_tool_offer(ROOT, [{**ECHO, "price": {"amount": 5, "varies": True}}], _payment())
    with pytest.raises(ValidationError, match="one of the two"):
        build_tool_offer(ROOT, [{**ECHO, "price": {}}], _payment())
    with pytest.raises(ValidationError, match="payment terms"):
        build_tool_offer(ROOT, [{**ECHO, "price": {"varies": True}}])


def test_not_confused_with_a_node_offer() -> None:
    node = sign_offer(build_offer("transformers", [], 1, 2), SELLER)
    with pytest.raises(ValidationError):
        ToolOffer.model_validate_json(node.model_dump_json())
    with pytest.raises(ValidationError):
        Offer.model_validate_json(_signed().model_dump_json())
    data = node.model_dump(mode="json") | {"kind": "node", "url": ROOT, "tools": []}
    with pytest.raises(ValidationError):
        ToolOffer.model_validate(data)


def test_registry_urls() -> None:
    assert registry_url(ROOT) == ROOT + "/tools" == registry_url(ROOT + "/tools/")
    assert is_tool_url(ROOT + "/tools") and is_tool_url(ROOT + "/tools/")
    assert not is_tool_url("http://node.test/v1")
    assert tool_root(ROOT + "/tools") == ROOT == tool_root(ROOT)
