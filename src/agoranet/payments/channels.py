"""Batch-settlement channels on the escrow, read and driven from the payer's side.

A channel is identified by the EIP-712 hash of its :class:`ChannelConfig` (the
x402 SDK's type). The payer opens it with a deposit through the ERC-3009
collector (the payer signs ``receiveWithAuthorization`` with the SDK's nonce and
collector-data encoders), and gets unclaimed money back with the timed
``initiateWithdraw`` / ``finalizeWithdraw``. Channels are found from the
escrow's ``ChannelCreated`` events and their state read from ``channels()``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Final

from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import Web3Exception
from x402.mechanisms.evm.batch_settlement.constants import (
    MIN_WITHDRAW_DELAY,
    RECEIVE_AUTHORIZATION_TYPES,
)
from x402.mechanisms.evm.batch_settlement.encoding import (
    build_erc3009_collector_data,
    build_erc3009_deposit_nonce,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from agoranet.chain.addresses import ChainAddresses
from agoranet.chain.compiled import contract_abi
from agoranet.chain.rpc import TxResult, send
from agoranet.errors import ChainError, ConfigError

__all__ = [
    "ChannelInfo",
    "chain_time",
    "config_tuple",
    "escrow_contract",
    "finalize_withdraw",
    "find_channel",
    "find_channels",
    "initiate_withdraw",
    "new_config",
    "open_channel",
    "read_channel",
]

ZERO_ADDRESS: Final = "0x0000000000000000000000000000000000000000"
_DEPOSIT_VALIDITY: Final = 3600


@dataclass(frozen=True)
class ChannelInfo:
    """A channel's config and on-chain state (amounts in base units)."""

    channel_id: str
    config: ChannelConfig
    balance: int
    total_claimed: int
    withdraw_amount: int
    withdraw_initiated_at: int

    @property
    def available(self) -> int:
        """Deposited and not yet claimed: what a withdrawal could return now."""
        return self.balance - self.total_claimed

    @property
    def withdraw_pending(self) -> bool:
        return self.withdraw_initiated_at != 0

    @property
    def finalize_after(self) -> int | None:
        """Earliest block timestamp for ``finalizeWithdraw``, if a withdrawal is pending."""
        if not self.withdraw_pending:
            return None
        return self.withdraw_initiated_at + self.config.withdraw_delay

    @property
    def has_subkey(self) -> bool:
        return self.config.payer_authorizer != ZERO_ADDRESS


def escrow_contract(w3: Web3, addresses: ChainAddresses) -> Any:
    return w3.eth.contract(
        address=Web3.to_checksum_address(addresses.escrow),
        abi=contract_abi("BatchSettlement"),
    )


def config_tuple(config: ChannelConfig) -> tuple[Any, ...]:
    """The config as the contract's ABI takes it."""
    return (
        config.payer,
        config.payer_authorizer,
        config.receiver,
        config.receiver_authorizer,
        config.token,
        config.withdraw_delay,
        bytes.fromhex(config.salt.removeprefix("0x")),
    )


def new_config(
    addresses: ChainAddresses,
    *,
    payer: str,
    receiver: str,
    receiver_authorizer: str | None = None,
    payer_authorizer: str = ZERO_ADDRESS,
    withdraw_delay: int = MIN_WITHDRAW_DELAY,
) -> ChannelConfig:
    """A fresh channel config (random salt) paying ``addresses.stablecoin``."""
    return ChannelConfig(
        payer=Web3.to_checksum_address(payer),
        payer_authorizer=Web3.to_checksum_address(payer_authorizer),
        receiver=Web3.to_checksum_address(receiver),
        receiver_authorizer=Web3.to_checksum_address(receiver_authorizer or receiver),
        token=Web3.to_checksum_address(addresses.require_stablecoin()),
        withdraw_delay=withdraw_delay,
        salt="0x" + secrets.token_bytes(32).hex(),
    )


def open_channel(
    w3: Web3,
    addresses: ChainAddresses,
    payer: LocalAccount,
    config: ChannelConfig,
    amount: int,
) -> tuple[str, TxResult]:
    """Deposit ``amount`` into the channel of ``config`` (creating it); (channel id, tx)."""
    if config.payer != payer.address:
        raise ConfigError("the channel's payer must be the wallet that deposits")
    if amount <= 0:
        raise ConfigError("a deposit must be more than zero")
    escrow = escrow_contract(w3, addresses)
    cfg = config_tuple(config)
    try:
        channel_id = "0x" + bytes(escrow.functions.getChannelId(cfg).call()).hex()
        token = w3.eth.contract(
            address=Web3.to_checksum_address(config.token), abi=contract_abi("Stablecoin")
        )
        domain = {
            "name": str(token.functions.name().call()),
            "version": str(token.functions.version().call()),
            "chainId": int(w3.eth.chain_id),
            "verifyingContract": config.token,
        }
        valid_before = int(w3.eth.get_block("latest")["timestamp"]) + _DEPOSIT_VALIDITY
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"cannot prepare the deposit: {_short(exc)}") from exc
    salt = "0x" + secrets.token_bytes(32).hex()
    nonce = build_erc3009_deposit_nonce(channel_id, salt)
    message = {
        "from": payer.address,
        "to": Web3.to_checksum_address(addresses.collector),
        "value": amount,
        "validAfter": 0,
        "validBefore": valid_before,
        "nonce": bytes.fromhex(nonce.removeprefix("0x")),
    }
    signable = encode_typed_data(
        domain_data=domain, message_types=RECEIVE_AUTHORIZATION_TYPES, message_data=message
    )
    signature = "0x" + bytes(payer.sign_message(signable).signature).hex()
    data = build_erc3009_collector_data("0", str(valid_before), salt, signature)
    call = escrow.functions.deposit(cfg, amount, addresses.collector, data)
    return channel_id, send(w3, payer, call, "deposit")


def read_channel(w3: Web3, addresses: ChainAddresses, config: ChannelConfig) -> ChannelInfo:
    escrow = escrow_contract(w3, addresses)
    try:
        cid = bytes(escrow.functions.getChannelId(config_tuple(config)).call())
        return _state(escrow, cid, config)
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"cannot read the channel: {_short(exc)}") from exc


def find_channels(
    w3: Web3, addresses: ChainAddresses, payer: str, *, from_block: int = 0
) -> list[ChannelInfo]:
    """Channels whose payer is ``payer``, found from ``ChannelCreated`` events."""
    payer = Web3.to_checksum_address(payer)
    return [c for c in _created(w3, addresses, None, from_block) if c.config.payer == payer]


def find_channel(
    w3: Web3, addresses: ChainAddresses, channel_id: str, *, from_block: int = 0
) -> ChannelInfo:
    """The channel with id ``channel_id`` (0x + 64 hex), from its ``ChannelCreated`` event."""
    raw = channel_id.removeprefix("0x")
    if len(raw) != 64 or any(c not in "0123456789abcdefABCDEF" for c in raw):
        raise ConfigError(f"{channel_id!r} is not a channel id (0x and 64 hex digits)")
    found = _created(w3, addresses, bytes.fromhex(raw), from_block)
    if not found:
        raise ChainError(f"no channel {channel_id} on the escrow at {addresses.escrow}")
    return found[0]


def initiate_withdraw(
    w3: Web3, addresses: ChainAddresses, account: LocalAccount, config: ChannelConfig, amount: int
) -> TxResult:
    call = escrow_contract(w3, addresses).functions.initiateWithdraw(config_tuple(config), amount)
    return send(w3, account, call, "initiateWithdraw")


def finalize_withdraw(
    w3: Web3, addresses: ChainAddresses, account: LocalAccount, config: ChannelConfig
) -> TxResult:
    call = escrow_contract(w3, addresses).functions.finalizeWithdraw(config_tuple(config))
    return send(w3, account, call, "finalizeWithdraw")


def _created(
    w3: Web3, addresses: ChainAddresses, channel_id: bytes | None, from_block: int
) -> list[ChannelInfo]:
    escrow = escrow_contract(w3, addresses)
    filters = {"channelId": channel_id} if channel_id is not None else None
    try:
        logs = escrow.events.ChannelCreated().get_logs(
            argument_filters=filters, from_block=from_block
        )
        seen: dict[bytes, ChannelInfo] = {}
        for log in logs:
            cid = bytes(log["args"]["channelId"])
            if cid not in seen:
                seen[cid] = _state(escrow, cid, _config(log["args"]["config"]))
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"cannot read the escrow's channels: {_short(exc)}") from exc
    return list(seen.values())


def _config(raw: Any) -> ChannelConfig:
    if isinstance(raw, dict) or hasattr(raw, "keys"):
        values = [raw[k] for k in ("payer", "payerAuthorizer", "receiver", "receiverAuthorizer",
                                   "token", "withdrawDelay", "salt")]  # fmt: skip
    else:
        values = list(raw)
    payer, payer_auth, receiver, receiver_auth, token, delay, salt = values
    return ChannelConfig(
        payer=Web3.to_checksum_address(payer),
        payer_authorizer=Web3.to_checksum_address(payer_auth),
        receiver=Web3.to_checksum_address(receiver),
        receiver_authorizer=Web3.to_checksum_address(receiver_auth),
        token=Web3.to_checksum_address(token),
        withdraw_delay=int(delay),
        salt="0x" + bytes(salt).hex(),
    )


def _state(escrow: Any, cid: bytes, config: ChannelConfig) -> ChannelInfo:
    balance, claimed = escrow.functions.channels(cid).call()
    w_amount, w_at = escrow.functions.pendingWithdrawals(cid).call()
    return ChannelInfo(
        channel_id="0x" + cid.hex(),
        config=config,
        balance=int(balance),
        total_claimed=int(claimed),
        withdraw_amount=int(w_amount),
        withdraw_initiated_at=int(w_at),
    )


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]


def chain_time(w3: Web3) -> int:
    """The latest block's timestamp (the chain's clock, not the wall clock)."""
    try:
        return int(w3.eth.get_block("latest")["timestamp"])
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"cannot read the latest block: {_short(exc)}") from exc
