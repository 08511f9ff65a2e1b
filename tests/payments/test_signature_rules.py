"""The node reads a signature by exactly the escrow's rule (``BatchSettlement._recover``):
65 bytes, 0 < r < n, 0 < s <= n/2, v 27 or 28. These pin each bound at its edge, since a
rule one off either way lets through a voucher the contract will refuse to pay (or refuses
one it would pay), and check that a malleable twin is brought back to the same signer."""

from __future__ import annotations

import pytest
from eth_account import Account

from agoranet.payments.ecdsa import (
    SECP256K1_N,
    SECP256K1_N_HALF,
    DigestSigner,
    canonical_signature,
    keccak,
    recover_address,
    signature_problem,
)

KEY = bytes.fromhex("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
ADDRESS = Account.from_key(KEY).address
DIGEST = keccak(b"one voucher")


def _sig(r: int, s: int, v: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])


def test_the_signer_is_the_wallet_of_its_key_and_signs_canonically() -> None:
    signer = DigestSigner(KEY)
    assert signer.address == ADDRESS
    signature = signer.sign(DIGEST)
    assert len(signature) == 65 and signature[64] in (27, 28)
    assert signature_problem(signature) is None
    assert recover_address(DIGEST, signature) == ADDRESS
    # the same bytes as eth_account's own signature of the digest
    assert signature == bytes(Account.unsafe_sign_hash(DIGEST, KEY).signature)


@pytest.mark.parametrize("size", [31, 33, 0])
def test_a_private_key_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=r"^a private key is 32 bytes$"):
        DigestSigner(KEY[:size] if size < 32 else KEY + b"\x01")


@pytest.mark.parametrize(
    ("r", "s", "v", "problem"),
    [
        (1, 1, 27, None),
        (SECP256K1_N - 1, SECP256K1_N_HALF, 28, None),
        (0, 1, 27, "its r is out of range"),
        (SECP256K1_N, 1, 27, "its r is out of range"),
        (1, 0, 27, "its s is not in the lower half"),
        (1, SECP256K1_N_HALF + 1, 27, "its s is not in the lower half"),
        (1, 1, 26, "its v is 26, not 27 or 28"),
        (1, 1, 29, "its v is 29, not 27 or 28"),
        (1, 1, 0, "its v is 0, not 27 or 28"),
        (1, 1, 1, "its v is 1, not 27 or 28"),
    ],
)  # fmt: skip
def test_each_bound_of_a_canonical_signature_at_its_edge(r: int, s: int, v: int,
                                                        problem: str | None) -> None:
    found = signature_problem(_sig(r, s, v))
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


@pytest.mark.parametrize("size", [0, 64, 66])
def test_a_signature_of_the_wrong_length_is_refused_with_its_length(size: int) -> None:
    assert signature_problem(bytes(size)) == f"a signature is 65 bytes, not {size}"
    assert canonical_signature(bytes(size)) is None
    assert recover_address(DIGEST, bytes(size)) is None


def test_a_high_s_twin_and_a_v_0_1_form_come_back_to_the_same_signature() -> None:
    good = DigestSigner(KEY).sign(DIGEST)
    s = int.from_bytes(good[32:64], "big")
    twin = good[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - good[64]])
    assert signature_problem(twin) is not None
    assert recover_address(DIGEST, twin) is None  # refused as the escrow refuses it
    assert canonical_signature(twin) == good
    assert canonical_signature(good[:64] + bytes([good[64] - 27])) == good
    assert canonical_signature(good) == good
    twin_v01 = twin[:64] + bytes([twin[64] - 27])
    assert canonical_signature(twin_v01) == good


@pytest.mark.parametrize(
    "signature",
    [
        _sig(0, 1, 27), _sig(SECP256K1_N, 1, 27), _sig(1, 0, 27), _sig(1, SECP256K1_N, 27),
        _sig(1, 1, 2), _sig(1, 1, 29), _sig(1, 1, 26),
    ],
)  # fmt: skip
def test_what_is_no_ecdsa_signature_at_all_has_no_canonical_form(signature: bytes) -> None:
    assert canonical_signature(signature) is None


def test_the_largest_low_s_is_kept_and_the_smallest_high_s_is_flipped() -> None:
    assert canonical_signature(_sig(1, 1, 27)) == _sig(1, 1, 27)  # the smallest r and s
    kept = canonical_signature(_sig(5, SECP256K1_N_HALF, 27))
    assert kept == _sig(5, SECP256K1_N_HALF, 27)
    flipped = canonical_signature(_sig(5, SECP256K1_N_HALF + 1, 27))
    assert flipped == _sig(5, SECP256K1_N - SECP256K1_N_HALF - 1, 28)
    assert canonical_signature(_sig(SECP256K1_N - 1, SECP256K1_N - 1, 1)) == _sig(
        SECP256K1_N - 1, 1, 27)


def test_a_digest_that_is_not_32_bytes_recovers_nobody() -> None:
    signature = DigestSigner(KEY).sign(DIGEST)
    assert recover_address(DIGEST[:31], signature) is None
    assert recover_address(DIGEST + b"\x00", signature) is None
    assert recover_address(keccak(b"another voucher"), signature) != ADDRESS
