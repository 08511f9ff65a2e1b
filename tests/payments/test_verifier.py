"""The node's fast voucher signature check agrees with the x402 SDK's own."""

from __future__ import annotations

import random

from eth_account import Account
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.facilitator.utils import (
    verify_batch_settlement_voucher_typed_data,
)
from x402.mechanisms.evm.signers import EthAccountSigner

from agoranet.payments.ecdsa import DigestSigner, recover_address
from agoranet.payments.verifier import voucher_signer


def sdk_ok(cid: str, amount: int, signer: str, signature: str, chain_id: int) -> bool:
    return verify_batch_settlement_voucher_typed_data(
        None,  # type: ignore[arg-type]  # ECDSA path
        channel_id=cid, max_claimable_amount=str(amount), payer_authorizer=signer,
        payer=signer, signature=signature, chain_id=chain_id)


def test_fast_check_matches_the_sdk() -> None:
    rng = random.Random(7)
    key = Account.create()
    other = Account.create()
    for chain_id in (31337, 8453):
        for _ in range(25):
            cid = "0x" + rng.randbytes(32).hex()
            amount = rng.randrange(1, 2**128)
            sig = sign_voucher(EthAccountSigner(key), cid, amount,
                               f"eip155:{chain_id}").signature
            assert voucher_signer(cid, amount, sig, chain_id) == key.address
            assert sdk_ok(cid, amount, key.address, sig, chain_id)
            for cid2, amount2, chain2 in ((cid, amount + 1, chain_id),
                                          ("0x" + rng.randbytes(32).hex(), amount, chain_id),
                                          (cid, amount, chain_id + 1)):
                fast = voucher_signer(cid2, amount2, sig, chain2) == key.address
                assert fast is False and sdk_ok(cid2, amount2, key.address, sig, chain2) is False
            forged = sign_voucher(EthAccountSigner(other), cid, amount,
                                  f"eip155:{chain_id}").signature
            assert voucher_signer(cid, amount, forged, chain_id) == other.address


def test_garbage_signatures_are_invalid() -> None:
    cid = "0x" + "ab" * 32
    for sig in ("0x", "0x1234", "0x" + "00" * 65, "0x" + "ff" * 65, "zz", "0x" + "11" * 64 + "1f"):
        assert voucher_signer(cid, 5, sig, 31337) is None
    assert voucher_signer("0x12", 5, "0x" + "11" * 65, 31337) is None
    assert voucher_signer(cid, 2**128, "0x" + "11" * 65, 31337) is None


def test_digest_signer_matches_eth_account() -> None:
    rng = random.Random(11)
    key = Account.create()
    signer = DigestSigner(bytes(key.key))
    assert signer.address == key.address
    for _ in range(20):
        digest = rng.randbytes(32)
        ours = signer.sign(digest)
        theirs = key.unsafe_sign_hash(digest)
        assert ours == bytes(theirs.signature)  # RFC 6979 on both sides: identical bytes
        assert recover_address(digest, ours) == key.address
        assert recover_address(digest, ours[:64] + bytes([ours[64] - 27])) == key.address
        assert recover_address(rng.randbytes(32), ours) != key.address
    assert recover_address(b"\0" * 32, b"\0" * 65) is None
    assert recover_address(b"\0" * 31, ours) is None


def test_payer_vouchers_are_the_sdks_bytes() -> None:
    """The payer signs vouchers through libsecp256k1; the SDK would sign the same bytes."""
    from agoranet.payments.verifier import voucher_digest

    rng = random.Random(13)
    key = Account.create()
    signer = DigestSigner(bytes(key.key))
    for chain_id in (31337, 84532):
        for _ in range(10):
            cid = "0x" + rng.randbytes(32).hex()
            amount = rng.randrange(0, 2**128)
            ours = "0x" + signer.sign(voucher_digest(cid, amount, chain_id)).hex()
            assert ours == sign_voucher(EthAccountSigner(key), cid, amount,
                                        f"eip155:{chain_id}").signature
