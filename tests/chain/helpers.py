"""Shared helpers for the contract tests: deployment, accounts, signing."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boa
import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
    LocalAuthorizerSigner,
    sign_claim_batch,
    sign_refund,
)
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    RECEIVE_AUTHORIZATION_TYPES,
)
from x402.mechanisms.evm.batch_settlement.encoding import (
    build_erc3009_collector_data,
    build_erc3009_deposit_nonce,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherClaim
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner

from agoranet.chain import CompiledContract, compile_contract

ZERO = "0x0000000000000000000000000000000000000000"
TOKEN_NAME = "USD Coin"
TOKEN_VERSION = "2"
DELAY = 900
FAR_FUTURE = 2**40


def account(label: str) -> LocalAccount:
    """A deterministic test account."""
    return Account.from_key(keccak(text=f"agoranet-test-{label}"))


def deploy(compiled: CompiledContract, *args: Any, sender: str | None = None) -> Any:
    """Deploy our compiled artefact (not boa's own build) and wrap it by ABI."""
    ctor = next((e for e in compiled.abi if e["type"] == "constructor"), None)
    encoded = b""
    if ctor is not None:
        types = [i["type"] for i in ctor["inputs"]]
        encoded = abi_encode(types, list(args))
    address, _ = boa.env.deploy_code(bytecode=compiled.bytecode + encoded, sender=sender)
    return boa.loads_abi(json.dumps(compiled.abi), name=compiled.name).at(address)


def install(compiled: CompiledContract, source: Any, target: str) -> Any:
    """Copy a deployed contract's runtime code and storage slots to ``target``."""
    boa.env.set_code(target, compiled.runtime_bytecode)
    for slot in compiled.storage_slots.values():
        boa.env.set_storage(target, slot, boa.env.get_storage(source.address, slot))
    return boa.loads_abi(json.dumps(compiled.abi), name=compiled.name).at(target)


@dataclass
class System:
    """Token, escrow and collector, the latter two at the SDK's addresses."""

    token: Any
    escrow: Any
    collector: Any
    minter: str

    @property
    def chain_id(self) -> int:
        return int(boa.env.evm.patch.chain_id)


def deploy_system() -> System:
    minter = str(boa.env.generate_address("minter"))
    token = deploy(compile_contract("Stablecoin"), sender=minter)
    escrow_src = deploy(compile_contract("BatchSettlement"))
    escrow = install(compile_contract("BatchSettlement"), escrow_src, BATCH_SETTLEMENT_ADDRESS)
    collector_src = deploy(compile_contract("Erc3009DepositCollector"), BATCH_SETTLEMENT_ADDRESS)
    collector = install(
        compile_contract("Erc3009DepositCollector"),
        collector_src,
        ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    )
    return System(token=token, escrow=escrow, collector=collector, minter=minter)


def revert_reason(err: BaseException) -> str:
    """The Error(string) reason of a failed boa call ('' if none)."""
    frame = err.args[0] if err.args else None
    output = bytes(getattr(getattr(frame, "computation", None), "output", b"") or b"")
    if output[:4] != bytes.fromhex("08c379a0"):
        return ""
    return str(abi_decode(["string"], output[4:])[0])


@contextmanager
def reverts(reason: str) -> Iterator[None]:
    """Expect the block to revert with exactly ``reason``."""
    with pytest.raises(boa.BoaError) as info:
        yield
    assert revert_reason(info.value) == reason


def sign_typed(
    acct: LocalAccount,
    domain: dict[str, Any],
    types: dict[str, list[dict[str, str]]],
    message: dict[str, Any],
) -> bytes:
    signable = encode_typed_data(domain_data=domain, message_types=types, message_data=message)
    return bytes(acct.sign_message(signable).signature)


def token_domain(token: Any, chain_id: int) -> dict[str, Any]:
    return {
        "name": TOKEN_NAME,
        "version": TOKEN_VERSION,
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(str(token.address)),
    }


@dataclass(frozen=True)
class Channel:
    """A channel config as the SDK sees it and as the contract takes it."""

    sdk: ChannelConfig

    @classmethod
    def make(
        cls,
        payer: str,
        receiver: str,
        receiver_authorizer: str,
        token: str,
        *,
        payer_authorizer: str = ZERO,
        withdraw_delay: int = DELAY,
        salt: bytes | None = None,
    ) -> Channel:
        return cls(
            ChannelConfig(
                payer=to_checksum_address(payer),
                payer_authorizer=to_checksum_address(payer_authorizer),
                receiver=to_checksum_address(receiver),
                receiver_authorizer=to_checksum_address(receiver_authorizer),
                token=to_checksum_address(token),
                withdraw_delay=withdraw_delay,
                salt="0x" + (salt or secrets.token_bytes(32)).hex(),
            )
        )

    @property
    def tuple(self) -> tuple[Any, ...]:
        c = self.sdk
        return (
            c.payer,
            c.payer_authorizer,
            c.receiver,
            c.receiver_authorizer,
            c.token,
            c.withdraw_delay,
            bytes.fromhex(c.salt.removeprefix("0x")),
        )

    def channel_id(self, chain_id: int) -> bytes:
        return bytes.fromhex(compute_channel_id(self.sdk, chain_id).removeprefix("0x"))


def deposit_data(
    system: System,
    payer: LocalAccount,
    channel: Channel,
    amount: int,
    *,
    valid_after: int = 0,
    valid_before: int = FAR_FUTURE,
    salt: int | None = None,
) -> bytes:
    """collectorData for an EIP-3009 deposit, built with the SDK's encoders."""
    salt_hex = hex(salt if salt is not None else secrets.randbits(256))
    cid = "0x" + channel.channel_id(system.chain_id).hex()
    nonce = build_erc3009_deposit_nonce(cid, salt_hex)
    sig = sign_typed(
        payer,
        token_domain(system.token, system.chain_id),
        RECEIVE_AUTHORIZATION_TYPES,
        {
            "from": payer.address,
            "to": ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            "value": amount,
            "validAfter": valid_after,
            "validBefore": valid_before,
            "nonce": bytes.fromhex(nonce.removeprefix("0x")),
        },
    )
    return build_erc3009_collector_data(
        str(valid_after), str(valid_before), salt_hex, "0x" + sig.hex()
    )


def fund_and_deposit(
    system: System, payer: LocalAccount, channel: Channel, amount: int, *, mint: bool = True
) -> None:
    if mint:
        system.token.mint(payer.address, amount, sender=system.minter)
    data = deposit_data(system, payer, channel, amount)
    system.escrow.deposit(channel.tuple, amount, system.collector.address, data)


# --- vouchers, claim batches and refunds, signed with the SDK's own helpers ---


def network(chain_id: int) -> str:
    return f"eip155:{chain_id}"


def sign_voucher_sdk(
    payer: LocalAccount, channel: Channel, max_claimable: int, chain_id: int
) -> bytes:
    fields = sign_voucher(
        EthAccountSigner(payer),
        "0x" + channel.channel_id(chain_id).hex(),
        max_claimable,
        network(chain_id),
    )
    return bytes.fromhex(fields.signature.removeprefix("0x"))


@dataclass(frozen=True)
class Claim:
    """One row of a claim batch."""

    channel: Channel
    max_claimable: int
    signature: bytes
    total_claimed: int

    @property
    def tuple(self) -> tuple[Any, ...]:
        return ((self.channel.tuple, self.max_claimable), self.signature, self.total_claimed)

    @property
    def sdk(self) -> VoucherClaim:
        return VoucherClaim(
            channel=self.channel.sdk,
            max_claimable_amount=str(self.max_claimable),
            signature="0x" + self.signature.hex(),
            total_claimed=str(self.total_claimed),
        )


def voucher_claim(
    payer: LocalAccount, channel: Channel, max_claimable: int, total: int, chain_id: int
) -> Claim:
    return Claim(
        channel, max_claimable, sign_voucher_sdk(payer, channel, max_claimable, chain_id), total
    )


def sign_batch_sdk(authorizer: LocalAccount, claims: list[Claim], chain_id: int) -> bytes:
    sig = sign_claim_batch(
        LocalAuthorizerSigner(authorizer), [c.sdk for c in claims], network(chain_id)
    )
    return bytes.fromhex(sig.removeprefix("0x"))


def sign_refund_sdk(
    authorizer: LocalAccount, channel: Channel, amount: int, nonce: int, chain_id: int
) -> bytes:
    sig = sign_refund(
        LocalAuthorizerSigner(authorizer),
        "0x" + channel.channel_id(chain_id).hex(),
        amount,
        nonce,
        network(chain_id),
    )
    return bytes.fromhex(sig.removeprefix("0x"))


PAYER, RECEIVER, AUTH, OTHER = (
    account("payer"),
    account("receiver"),
    account("auth"),
    account("other"),
)


def open_test_channel(system: System, amount: int = 1_000, **kw: object) -> Channel:
    """A channel from PAYER to RECEIVER (AUTH authorises claims), funded with ``amount``."""
    ch = Channel.make(
        PAYER.address, RECEIVER.address, AUTH.address, str(system.token.address), **kw
    )  # type: ignore[arg-type]
    fund_and_deposit(system, PAYER, ch, amount)
    return ch
