"""The node's fast voucher signature check agrees with the x402 SDK's own."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from eth_account import Account
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.facilitator.utils import (
    verify_batch_settlement_voucher_typed_data,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.signers import EthAccountSigner

from agoranet.errors import PaymentRequiredError, ReceiptError
from agoranet.payments.accept.verifier import Voucher, check_signature
from agoranet.payments.ecdsa import (
    SECP256K1_N,
    SECP256K1_N_HALF,
    DigestSigner,
    canonical_signature,
    recover_address,
    signature_problem,
)
from agoranet.payments.receipts import Receipt, ReceiptSigner, verify_receipt
from agoranet.payments.vouchers import voucher_digest, voucher_signer

_ADDR = Account.create().address
CONFIG = ChannelConfig.from_dict({"payer": _ADDR, "payerAuthorizer": _ADDR, "receiver": _ADDR,
                                  "receiverAuthorizer": _ADDR, "token": _ADDR,
                                  "withdrawDelay": 900, "salt": "0x" + "00" * 32})


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
        # v 0/1: the escrow's ecrecover takes only 27/28, so neither do we
        assert recover_address(digest, ours[:64] + bytes([ours[64] - 27])) is None
        assert recover_address(rng.randbytes(32), ours) != key.address
    assert recover_address(b"\0" * 32, b"\0" * 65) is None
    assert recover_address(b"\0" * 31, ours) is None


def test_payer_vouchers_are_the_sdks_bytes() -> None:
    """The payer signs vouchers through libsecp256k1; the SDK would sign the same bytes."""
    from agoranet.payments.vouchers import voucher_digest

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


def _twin(signature: bytes) -> bytes:
    """The high-s twin of a canonical signature: same signer, s' = n - s, v flipped."""
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + \
        bytes([55 - signature[64]])


def test_non_canonical_signatures_are_refused_by_the_escrows_rule() -> None:
    """High-s twins and v 0/1 recover the payer too, but the escrow's claim refuses them:
    the node must refuse them as well (a 402 naming the reason), one rule for both."""
    rng = random.Random(17)
    key = Account.create()
    signer = DigestSigner(bytes(key.key))
    for _ in range(20):
        cid = "0x" + rng.randbytes(32).hex()
        amount = rng.randrange(1, 2**100)
        good = signer.sign(voucher_digest(cid, amount, 31337))
        assert signature_problem(good) is None
        assert int.from_bytes(good[32:64], "big") <= SECP256K1_N_HALF
        twin = _twin(good)
        low_v = good[:64] + bytes([good[64] - 27])
        for bad, why in ((twin, "lower half"), (low_v, "not 27 or 28"),
                         (good[:64] + b"\x1d", "not 27 or 28"), (good + b"\0", "65 bytes"),
                         (b"\0" * 32 + good[32:], "r is out of range"),
                         (good[:32] + b"\0" * 32 + good[64:], "lower half")):
            problem = signature_problem(bad)
            assert problem is not None and why in problem
            assert voucher_signer(cid, amount, "0x" + bad.hex(), 31337) is None
            voucher = Voucher("voucher", cid, CONFIG, amount, "0x" + bad.hex(), {})
            with pytest.raises(PaymentRequiredError) as info:
                check_signature(voucher, 31337)
            assert info.value.reason == bs_errors.ERR_INVALID_VOUCHER_SIGNATURE
            assert "escrow" in str(info.value)
        # the canonical twin is the original (a stored legacy voucher can still be claimed)
        assert canonical_signature(twin) == good and canonical_signature(low_v) == good
        assert canonical_signature(good) == good
        assert voucher_signer(cid, amount, "0x" + good.hex(), 31337) == key.address


def test_a_canonical_voucher_for_another_signer_is_refused() -> None:
    key = Account.create()
    cid = "0x" + "ab" * 32
    sig = DigestSigner(bytes(key.key)).sign(voucher_digest(cid, 7, 31337))
    voucher = Voucher("voucher", cid, CONFIG, 7, "0x" + sig.hex(), {})
    with pytest.raises(PaymentRequiredError) as info:  # CONFIG's authorizer is not ``key``
        check_signature(voucher, 31337)
    assert info.value.reason == bs_errors.ERR_INVALID_VOUCHER_SIGNATURE
    assert "not signed by the channel's payer authorizer" in str(info.value)


def test_receipts_follow_the_same_rule() -> None:
    """A receipt's high-s twin or v 0/1 form is refused like a voucher's."""
    signer = ReceiptSigner(bytes(Account.create().key))
    receipt = signer.sign(Receipt("r1", "0x" + "cd" * 32, 3, 5, 13, 13, 31337))
    verify_receipt(receipt, signer.address)
    raw = bytes.fromhex(receipt.signature.removeprefix("0x"))
    for bad in (_twin(raw), raw[:64] + bytes([raw[64] - 27])):
        with pytest.raises(ReceiptError):
            verify_receipt(replace(receipt, signature="0x" + bad.hex()), signer.address)
