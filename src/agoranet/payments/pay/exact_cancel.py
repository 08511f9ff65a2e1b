"""Proving that an ``exact`` payment was never settled: cancelling its EIP-3009 authorization.

A buyer that signed an ``exact`` transfer (EIP-3009 ``transferWithAuthorization``) and
got no answer cannot tell whether the seller settled it: the seller holds a valid
authorization until its ``validBefore``, which the seller's requirement sets (an hour
by default). So such a payment counts as spent -- unless the buyer cancels it. The token's
``cancelAuthorization(authorizer, nonce, v, r, s)`` marks an unused nonce used, signed by
the authorizer; it reverts if the nonce was used already. The chain orders the two: once
the cancel is mined the seller's settlement of that nonce reverts, and a cancel that
reverts means the transfer went through. :func:`cancel_authorization` sends it and says
which happened: ``True`` (cancelled: nothing moved, and nothing can), ``False`` (the
nonce was used: the transfer happened). A chain that cannot be reached raises
:class:`~agoranet.errors.ChainError`: then nothing is known and the payment stays spent.
"""

from __future__ import annotations

from typing import Final

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import Web3Exception

from agoranet.chain.addresses import ChainAddresses
from agoranet.chain.rpc import send
from agoranet.errors import ChainError, ContractError
from agoranet.payments.wallet import stablecoin_contract

__all__ = ["CANCEL_AUTHORIZATION", "authorization_used", "cancel_authorization"]

CANCEL_AUTHORIZATION: Final = {"CancelAuthorization": [
    {"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}]}


def authorization_used(w3: Web3, addresses: ChainAddresses, authorizer: str,
                       nonce: str) -> bool:
    """Whether ``authorizer``'s EIP-3009 ``nonce`` was used (a transfer) or cancelled."""
    token = stablecoin_contract(w3, addresses)
    try:
        return bool(token.functions.authorizationState(
            Web3.to_checksum_address(authorizer), _bytes32(nonce)).call())
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"cannot read the authorization's state: {exc}") from exc


def cancel_authorization(w3: Web3, addresses: ChainAddresses, account: LocalAccount,
                         nonce: str) -> bool:
    """Cancel ``account``'s unused EIP-3009 authorization ``nonce`` on chain: True if it was
    cancelled (its transfer can never happen), False if it was used already (its transfer
    happened). ChainError if the chain cannot tell."""
    if authorization_used(w3, addresses, account.address, nonce):
        return False
    token = stablecoin_contract(w3, addresses)
    try:
        domain = {"name": str(token.functions.name().call()),
                  "version": str(token.functions.version().call()),
                  "chainId": int(w3.eth.chain_id), "verifyingContract": token.address}
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"cannot read the token's EIP-712 domain: {exc}") from exc
    signed = account.sign_typed_data(domain, CANCEL_AUTHORIZATION,
                                     {"authorizer": account.address, "nonce": nonce})
    call = token.functions.cancelAuthorization(
        account.address, _bytes32(nonce), signed.v, signed.r.to_bytes(32, "big"),
        signed.s.to_bytes(32, "big"))
    try:
        send(w3, account, call, "cancelling the exact payment's authorization")
    except ContractError:  # used meanwhile: the seller settled it first
        if authorization_used(w3, addresses, account.address, nonce):
            return False
        raise
    return True


def _bytes32(nonce: str) -> bytes:
    raw = bytes.fromhex(nonce.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"an EIP-3009 nonce is 32 bytes, not {len(raw)}")
    return raw
