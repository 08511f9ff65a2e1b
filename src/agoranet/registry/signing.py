"""Signed offers: the node's key signs its offer so gateways can check it.

The signature is EIP-191 (``personal_sign``) over the offer's canonical JSON
(sorted keys, no spaces) without the ``signer`` and ``signature`` fields. A
gateway recovers the signer and compares it with the registry entry and with
the offer's ``payment.pay_to``.
"""

from __future__ import annotations

import json

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from web3 import Web3

from agoranet.registry.offer import Offer

__all__ = ["canonical_offer", "offer_signer", "sign_offer"]


def canonical_offer(offer: Offer) -> bytes:
    data = offer.model_dump(mode="json", exclude={"signer", "signature"})
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def sign_offer(offer: Offer, account: LocalAccount) -> Offer:
    signed = account.sign_message(encode_defunct(canonical_offer(offer)))
    return offer.model_copy(update={"signer": account.address,
                                    "signature": "0x" + bytes(signed.signature).hex()})


def offer_signer(offer: Offer) -> str:
    """The address that signed ``offer``; ValueError if unsigned or if it is not ``signer``."""
    if not offer.signature or not offer.signer:
        raise ValueError("the offer is not signed")
    recovered = Account.recover_message(encode_defunct(canonical_offer(offer)),
                                        signature=offer.signature)
    if Web3.to_checksum_address(recovered) != Web3.to_checksum_address(offer.signer):
        raise ValueError(f"the offer claims signer {offer.signer} but was signed by {recovered}")
    return Web3.to_checksum_address(recovered)
