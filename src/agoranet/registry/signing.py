"""Signed offers: the seller's key signs its offer so gateways can check it.

The signature is EIP-191 (``personal_sign``) over the offer's canonical JSON
(sorted keys, no spaces) without the ``signer`` and ``signature`` fields. A
gateway recovers the signer and compares it with the registry entry and with
the offer's ``payment.pay_to``. The same rules sign a node's
:class:`~agoranet.registry.offer.Offer` and a tool server's
:class:`~agoranet.registry.tool_offer.ToolOffer`: any pydantic model with optional
``signer`` and ``signature`` fields.
"""

from __future__ import annotations

import json
from typing import TypeVar

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_keys.exceptions import BadSignature
from pydantic import BaseModel
from web3 import Web3

__all__ = ["canonical_offer", "offer_signer", "sign_offer"]

_Signed = TypeVar("_Signed", bound=BaseModel)


def canonical_offer(offer: BaseModel) -> bytes:
    data = offer.model_dump(mode="json", exclude={"signer", "signature"})
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def sign_offer(offer: _Signed, account: LocalAccount) -> _Signed:
    signed = account.sign_message(encode_defunct(canonical_offer(offer)))
    return offer.model_copy(update={"signer": account.address,
                                    "signature": "0x" + bytes(signed.signature).hex()})


def offer_signer(offer: BaseModel) -> str:
    """The address that signed ``offer``; ValueError if unsigned or if it is not ``signer``."""
    signer, signature = getattr(offer, "signer", None), getattr(offer, "signature", None)
    if not isinstance(signature, str) or not isinstance(signer, str) or not signature \
            or not signer:
        raise ValueError("the offer is not signed")
    try:
        recovered = Account.recover_message(encode_defunct(canonical_offer(offer)),
                                            signature=signature)
    except (ValueError, BadSignature) as exc:
        raise ValueError(f"the offer's signature is malformed: {exc}") from None
    if Web3.to_checksum_address(recovered) != Web3.to_checksum_address(signer):
        raise ValueError(f"the offer claims signer {signer} but was signed by {recovered}")
    return Web3.to_checksum_address(recovered)
