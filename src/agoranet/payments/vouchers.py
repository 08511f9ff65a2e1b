"""A batch-settlement voucher's EIP-712 digest and signer: what a payer signs and a node
checks (the same typed data as the x402 SDK's)."""

from __future__ import annotations

import functools
from typing import Final

from eth_account.messages import encode_typed_data
from x402.mechanisms.evm.batch_settlement.constants import VOUCHER_TYPES
from x402.mechanisms.evm.batch_settlement.utils import get_batch_settlement_eip712_domain

from agoranet.payments.ecdsa import keccak, recover_address

__all__ = ["voucher_digest", "voucher_signer"]


_VOUCHER_TYPEHASH: Final = keccak(b"Voucher(bytes32 channelId,uint128 maxClaimableAmount)")


@functools.lru_cache(maxsize=16)
def _domain_separator(chain_id: int) -> bytes:
    """The x402 batch-settlement EIP-712 domain separator (from the SDK's domain)."""
    signable = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(chain_id), message_types=VOUCHER_TYPES,
        message_data={"channelId": b"\0" * 32, "maxClaimableAmount": 0})
    return bytes(signable.header)


def voucher_digest(channel_id: str, amount: int, chain_id: int) -> bytes:
    """The EIP-712 digest a payer signs for a voucher (same as the SDK's typed data)."""
    cid = bytes.fromhex(channel_id.removeprefix("0x"))
    if len(cid) != 32 or not 0 <= amount < 2**128:
        raise ValueError("channel id must be 32 bytes and the amount a uint128")
    struct = keccak(_VOUCHER_TYPEHASH + cid + amount.to_bytes(32, "big"))
    return keccak(b"\x19\x01" + _domain_separator(chain_id) + struct)


def voucher_signer(channel_id: str, amount: int, signature: str, chain_id: int) -> str | None:
    """The checksummed address that signed a voucher, or None if the signature is invalid."""
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
        digest = voucher_digest(channel_id, amount, chain_id)
    except ValueError:
        return None
    return recover_address(digest, raw)
