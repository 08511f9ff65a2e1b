"""Budgeted sub-keys: a channel whose voucher signer is a fresh key of its own.

:func:`create_subkey` makes a key, opens a channel with it as ``payerAuthorizer``
and the wallet as ``payer``, and deposits the budget. The escrow then accepts
vouchers on that channel only from the sub-key and never pays out more than the
channel's balance, so whoever holds the sub-key file can spend at most the
deposit, and only to the channel's receiver. :func:`revoke` takes back what is
left with the escrow's timed withdrawal (money returns to the payer, never to
the sub-key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.constants import MIN_WITHDRAW_DELAY
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherFields
from x402.mechanisms.evm.signers import EthAccountSigner

from agoranet.chain.addresses import ChainAddresses
from agoranet.chain.rpc import TxResult, increase_time
from agoranet.errors import ContractError, WalletError
from agoranet.payments.channels import (
    ChannelInfo,
    chain_time,
    finalize_withdraw,
    initiate_withdraw,
    new_config,
    open_channel,
    read_channel,
)
from agoranet.payments.wallet import write_private

__all__ = [
    "SUBKEY_FORMAT",
    "RevokeOutcome",
    "SubKey",
    "create_subkey",
    "read_subkey",
    "revoke",
    "write_subkey",
]

SUBKEY_FORMAT: Final = "agoranet-subkey/1"


@dataclass(frozen=True)
class SubKey:
    """What an agent needs to pay from one channel: the key, the channel, the cap."""

    private_key: str
    chain_id: int
    escrow: str
    channel_id: str
    config: ChannelConfig
    deposit: int

    @property
    def address(self) -> str:
        return str(Account.from_key(self.private_key).address)

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"

    def account(self) -> LocalAccount:
        account: LocalAccount = Account.from_key(self.private_key)
        return account

    def sign_voucher(self, max_claimable: int) -> VoucherFields:
        """A cumulative voucher for this channel, signed with the sub-key (SDK signer)."""
        return sign_voucher(
            EthAccountSigner(self.account()), self.channel_id, max_claimable, self.network
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SUBKEY_FORMAT,
            "address": self.address,
            "private_key": self.private_key,
            "chain_id": self.chain_id,
            "escrow": self.escrow,
            "channel_id": self.channel_id,
            "channel_config": self.config.to_dict(),
            "deposit": str(self.deposit),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SubKey:
        if data.get("format") != SUBKEY_FORMAT:
            raise ValueError(f"format is not {SUBKEY_FORMAT}")
        return cls(
            private_key=str(data["private_key"]),
            chain_id=int(data["chain_id"]),
            escrow=Web3.to_checksum_address(str(data["escrow"])),
            channel_id=str(data["channel_id"]),
            config=ChannelConfig.from_dict(dict(data["channel_config"])),
            deposit=int(data["deposit"]),
        )


def create_subkey(
    w3: Web3,
    addresses: ChainAddresses,
    payer: LocalAccount,
    *,
    receiver: str,
    deposit: int,
    receiver_authorizer: str | None = None,
    withdraw_delay: int = MIN_WITHDRAW_DELAY,
) -> tuple[SubKey, TxResult]:
    """A fresh key and a channel from ``payer`` to ``receiver`` funded with ``deposit``."""
    key: LocalAccount = Account.create()
    config = new_config(
        addresses,
        payer=payer.address,
        receiver=receiver,
        receiver_authorizer=receiver_authorizer,
        payer_authorizer=key.address,
        withdraw_delay=withdraw_delay,
    )
    channel_id, tx = open_channel(w3, addresses, payer, config, deposit)
    subkey = SubKey(
        private_key="0x" + bytes(key.key).hex(),
        chain_id=addresses.chain_id,
        escrow=Web3.to_checksum_address(addresses.escrow),
        channel_id=channel_id,
        config=config,
        deposit=deposit,
    )
    return subkey, tx


def write_subkey(path: Path, subkey: SubKey) -> None:
    """Write the sub-key file (a new file, mode 0600)."""
    write_private(path, json.dumps(subkey.to_json(), indent=2) + "\n")


def read_subkey(path: Path) -> SubKey:
    try:
        return SubKey.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise WalletError(f"no sub-key file at {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WalletError(f"{path} is not an agoranet sub-key file ({exc})") from None


@dataclass(frozen=True)
class RevokeOutcome:
    """Where a revocation stands after :func:`revoke`."""

    state: Literal["nothing-left", "pending", "finalized"]
    channel: ChannelInfo
    returned: int = 0
    finalize_after: int | None = None
    transactions: tuple[TxResult, ...] = ()


_INITIATE_ATTEMPTS = 3


def revoke(
    w3: Web3,
    addresses: ChainAddresses,
    payer: LocalAccount,
    config: ChannelConfig,
    *,
    advance_time: bool = False,
) -> RevokeOutcome:
    """Withdraw what is left on a channel: initiate, then finalize once the delay is over.

    Call again after ``finalize_after`` to finish. With ``advance_time`` (dev
    chain 31337 only) the chain's clock is moved past the delay and the
    withdrawal is finalized at once.
    """
    if config.payer != payer.address:
        raise WalletError(f"this channel's payer is {config.payer}, not this wallet")
    txs: list[TxResult] = []
    info = read_channel(w3, addresses, config)
    for attempt in range(_INITIATE_ATTEMPTS):
        if info.withdraw_pending:
            break
        if info.available == 0:
            return RevokeOutcome("nothing-left", info)
        try:
            txs.append(initiate_withdraw(w3, addresses, payer, config, info.available))
        except ContractError:
            # The receiver claimed between our read and our transaction (its settlement
            # loop runs on its own): what is available is less now. Read it again.
            fresh = read_channel(w3, addresses, config)
            if attempt + 1 == _INITIATE_ATTEMPTS or fresh.total_claimed == info.total_claimed:
                raise
            info = fresh
            continue
        info = read_channel(w3, addresses, config)
    due = info.finalize_after
    assert due is not None
    now = chain_time(w3)
    if now < due and advance_time:
        increase_time(w3, due - now)
        now = chain_time(w3)
    if now < due:
        return RevokeOutcome("pending", info, finalize_after=due, transactions=tuple(txs))
    before = info.balance
    txs.append(finalize_withdraw(w3, addresses, payer, config))
    after = read_channel(w3, addresses, config)
    return RevokeOutcome(
        "finalized", after, returned=before - after.balance, transactions=tuple(txs)
    )
