"""Stablecoin: ERC-20, EIP-2612 permit, EIP-3009 authorizations, minting."""

from __future__ import annotations

import secrets

import boa
import pytest
from eth.exceptions import Revert
from eth_abi import encode as abi_encode
from eth_utils import keccak
from x402.mechanisms.evm.batch_settlement.constants import RECEIVE_AUTHORIZATION_TYPES

from .helpers import FAR_FUTURE, ZERO, System, account, reverts, sign_typed, token_domain

ALICE = account("alice")
BOB = account("bob")

PERMIT_TYPES = {
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}
TRANSFER_TYPES = {
    "TransferWithAuthorization": RECEIVE_AUTHORIZATION_TYPES["ReceiveWithAuthorization"]
}
CANCEL_TYPES = {
    "CancelAuthorization": [
        {"name": "authorizer", "type": "address"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


def vrs(sig: bytes) -> tuple[int, bytes, bytes]:
    return sig[64], sig[:32], sig[32:64]


def auth_sig(
    system: System,
    types: dict,
    sender=ALICE,
    to=None,
    value=10,
    after=0,
    before=FAR_FUTURE,
    nonce=None,
) -> tuple[dict, bytes]:
    msg = {
        "from": sender.address,
        "to": to or BOB.address,
        "value": value,
        "validAfter": after,
        "validBefore": before,
        "nonce": nonce or secrets.token_bytes(32),
    }
    return msg, sign_typed(sender, token_domain(system.token, system.chain_id), types, msg)


def args(msg: dict) -> tuple:
    return (
        msg["from"],
        msg["to"],
        msg["value"],
        msg["validAfter"],
        msg["validBefore"],
        msg["nonce"],
    )


@pytest.fixture
def funded(system: System) -> System:
    system.token.mint(ALICE.address, 1_000, sender=system.minter)
    return system


def test_metadata(system: System) -> None:
    t = system.token
    assert (t.name(), t.symbol(), t.version(), t.decimals()) == ("USD Coin", "USDC", "2", 6)
    assert t.minter() == system.minter


def test_domain_separator_matches_eth_account(system: System) -> None:
    domain_typehash = keccak(
        text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    expected = keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                domain_typehash,
                keccak(text="USD Coin"),
                keccak(text="2"),
                system.chain_id,
                str(system.token.address),
            ],
        )
    )
    assert system.token.DOMAIN_SEPARATOR() == expected


def test_mint_only_minter(system: System) -> None:
    t = system.token
    t.mint(ALICE.address, 5, sender=system.minter)
    assert t.balanceOf(ALICE.address) == 5 and t.totalSupply() == 5
    with reverts("Stablecoin: caller is not the minter"):
        t.mint(ALICE.address, 5, sender=ALICE.address)
    with reverts("Stablecoin: mint to the zero address"):
        t.mint(ZERO, 5, sender=system.minter)


def test_transfer(funded: System) -> None:
    t = funded.token
    assert t.transfer(BOB.address, 300, sender=ALICE.address)
    assert (t.balanceOf(ALICE.address), t.balanceOf(BOB.address)) == (700, 300)
    with reverts("Stablecoin: transfer amount exceeds balance"):
        t.transfer(BOB.address, 701, sender=ALICE.address)
    with reverts("Stablecoin: transfer to the zero address"):
        t.transfer(ZERO, 1, sender=ALICE.address)
    assert t.totalSupply() == 1_000


def test_approve_transfer_from(funded: System) -> None:
    t = funded.token
    assert t.approve(BOB.address, 100, sender=ALICE.address)
    assert t.allowance(ALICE.address, BOB.address) == 100
    t.transferFrom(ALICE.address, BOB.address, 60, sender=BOB.address)
    assert t.allowance(ALICE.address, BOB.address) == 40
    with reverts("Stablecoin: insufficient allowance"):
        t.transferFrom(ALICE.address, BOB.address, 41, sender=BOB.address)
    with reverts("Stablecoin: approve to the zero address"):
        t.approve(ZERO, 1, sender=ALICE.address)
    t.approve(BOB.address, 2**256 - 1, sender=ALICE.address)
    t.transferFrom(ALICE.address, BOB.address, 900, sender=BOB.address)
    assert t.allowance(ALICE.address, BOB.address) == 2**256 - 1
    assert t.balanceOf(BOB.address) == 960


def _permit(system: System, value: int, deadline: int, nonce: int = 0, signer=ALICE) -> bytes:
    msg = {
        "owner": ALICE.address,
        "spender": BOB.address,
        "value": value,
        "nonce": nonce,
        "deadline": deadline,
    }
    return sign_typed(signer, token_domain(system.token, system.chain_id), PERMIT_TYPES, msg)


def test_permit(funded: System) -> None:
    t = funded.token
    deadline = boa.env.timestamp + 100
    sig = _permit(funded, 77, deadline)
    t.permit(ALICE.address, BOB.address, 77, deadline, *vrs(sig))
    assert t.allowance(ALICE.address, BOB.address) == 77
    assert t.nonces(ALICE.address) == 1
    with reverts("Stablecoin: invalid signature"):  # replay: nonce moved on
        t.permit(ALICE.address, BOB.address, 77, deadline, *vrs(sig))


def test_permit_reverts(funded: System) -> None:
    t = funded.token
    now = boa.env.timestamp
    with reverts("Stablecoin: permit expired"):
        t.permit(ALICE.address, BOB.address, 1, now - 1, *vrs(_permit(funded, 1, now - 1)))
    with reverts("Stablecoin: invalid signature"):
        t.permit(
            ALICE.address, BOB.address, 1, now + 9, *vrs(_permit(funded, 1, now + 9, signer=BOB))
        )
    with reverts("Stablecoin: invalid signature"):
        t.permit(ZERO, BOB.address, 1, now + 9, 27, b"\x01" * 32, b"\x01" * 32)


def test_transfer_with_authorization(funded: System) -> None:
    t = funded.token
    msg, sig = auth_sig(funded, TRANSFER_TYPES, value=250)
    t.transferWithAuthorization(*args(msg), *vrs(sig), sender=BOB.address)
    assert t.balanceOf(BOB.address) == 250
    assert t.authorizationState(ALICE.address, msg["nonce"])
    with reverts("Stablecoin: authorization is used or canceled"):
        t.transferWithAuthorization(*args(msg), *vrs(sig))


def test_transfer_with_authorization_bytes_overload(funded: System) -> None:
    t = funded.token
    msg, sig = auth_sig(funded, TRANSFER_TYPES, value=5)
    selector = keccak(
        text="transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    )[:4]
    data = selector + abi_encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
        [*args(msg), sig],
    )
    boa.env.raw_call(str(t.address), data=data)
    assert t.balanceOf(BOB.address) == 5
    with pytest.raises(Revert) as replay:
        boa.env.raw_call(str(t.address), data=data)
    assert b"authorization is used or canceled" in replay.value.args[0]
    with pytest.raises(Revert) as unknown:
        boa.env.raw_call(str(t.address), data=b"\xde\xad\xbe\xef")
    assert b"unknown function" in unknown.value.args[0]
    with pytest.raises(Revert) as short:
        boa.env.raw_call(str(t.address), data=data[:100])
    assert b"calldata too short" in short.value.args[0]


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"after": 2**40}, "Stablecoin: authorization is not yet valid"),
        ({"before": 1}, "Stablecoin: authorization is expired"),
        ({"value": 10_000}, "Stablecoin: transfer amount exceeds balance"),
    ],
)
def test_transfer_with_authorization_reverts(funded: System, override: dict, reason: str) -> None:
    msg, sig = auth_sig(funded, TRANSFER_TYPES, **override)
    with reverts(reason):
        funded.token.transferWithAuthorization(*args(msg), *vrs(sig))


def test_authorization_wrong_signer_or_tampered(funded: System) -> None:
    msg, sig = auth_sig(funded, TRANSFER_TYPES, sender=ALICE)
    tampered = dict(msg, value=msg["value"] + 1)
    with reverts("Stablecoin: invalid signature"):
        funded.token.transferWithAuthorization(*args(tampered), *vrs(sig))
    high_s = (2**256 - 1).to_bytes(32, "big")
    with reverts("Stablecoin: invalid signature"):
        funded.token.transferWithAuthorization(*args(msg), sig[64], sig[:32], high_s)


def test_receive_with_authorization(funded: System) -> None:
    t = funded.token
    msg, sig = auth_sig(funded, RECEIVE_AUTHORIZATION_TYPES, value=40)
    with reverts("Stablecoin: caller must be the payee"):
        t.receiveWithAuthorization(*args(msg), *vrs(sig), sender=ALICE.address)
    t.receiveWithAuthorization(*args(msg), *vrs(sig), sender=BOB.address)
    assert t.balanceOf(BOB.address) == 40
    # a transfer-typed signature is not a receive authorization
    msg2, sig2 = auth_sig(funded, TRANSFER_TYPES, value=1)
    with reverts("Stablecoin: invalid signature"):
        t.receiveWithAuthorization(*args(msg2), *vrs(sig2), sender=BOB.address)


def test_cancel_authorization(funded: System) -> None:
    t = funded.token
    msg, sig = auth_sig(funded, TRANSFER_TYPES, value=1)
    domain = token_domain(t, funded.chain_id)
    cancel = {"authorizer": ALICE.address, "nonce": msg["nonce"]}
    csig = sign_typed(ALICE, domain, CANCEL_TYPES, cancel)
    with reverts("Stablecoin: invalid signature"):
        t.cancelAuthorization(
            ALICE.address, msg["nonce"], *vrs(sign_typed(BOB, domain, CANCEL_TYPES, cancel))
        )
    t.cancelAuthorization(ALICE.address, msg["nonce"], *vrs(csig))
    assert t.authorizationState(ALICE.address, msg["nonce"])
    with reverts("Stablecoin: authorization is used or canceled"):
        t.transferWithAuthorization(*args(msg), *vrs(sig))
    with reverts("Stablecoin: authorization is used or canceled"):
        t.cancelAuthorization(ALICE.address, msg["nonce"], *vrs(csig))
