"""Options and helpers shared by ``agoranet wallet`` and ``agoranet wallet subkey``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3

    from agoranet.chain.addresses import ChainAddresses

__all__ = [
    "amount_option",
    "connect_chain",
    "console",
    "keystore_option",
    "keystore_path",
    "read_password",
    "rpc_option",
    "unlock_wallet",
]

console = Console(highlight=False, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def keystore_option(fn: F) -> F:
    return click.option(
        "--keystore", "keystore", type=click.Path(dir_okay=False, path_type=Path), default=None,
        envvar="AGORANET_WALLET_KEYSTORE",
        help="Keystore file [default: ~/.agoranet/wallet/keystore.json, or under AGORANET_HOME].",
    )(fn)  # fmt: skip


def rpc_option(fn: F) -> F:
    return click.option(
        "--rpc-url", envvar="AGORANET_CHAIN_RPC_URL", default="http://127.0.0.1:8545",
        show_default=True, help="JSON-RPC URL of the chain (env AGORANET_CHAIN_RPC_URL).",
    )(fn)  # fmt: skip


def amount_option(fn: F) -> F:
    return click.option(
        "--base-units", is_flag=True,
        help="Read amounts as whole base units (1 USDC = 1000000) instead of decimal USDC.",
    )(fn)  # fmt: skip


def keystore_path(keystore: Path | None) -> Path:
    from agoranet.payments.wallet import default_keystore

    return keystore if keystore is not None else default_keystore()


def read_password(*, confirm: bool = False) -> str:
    """From ``AGORANET_WALLET_PASSWORD`` if set, else a hidden prompt (confirmed on ``new``)."""
    from agoranet.payments.wallet import PASSWORD_ENV_VAR

    env = os.environ.get(PASSWORD_ENV_VAR)
    if env:
        return env
    return str(click.prompt("Wallet password", hide_input=True, confirmation_prompt=confirm))


def unlock_wallet(keystore: Path | None) -> LocalAccount:
    from agoranet.payments.wallet import keystore_address, unlock

    path = keystore_path(keystore)
    keystore_address(path)  # a missing or broken keystore fails before the prompt
    return unlock(path, read_password())


def connect_chain(rpc_url: str) -> tuple[Web3, ChainAddresses]:
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.cli.preflight import connect_chain_or_hint
    from agoranet.config import ChainSettings

    w3 = connect_chain_or_hint(rpc_url)
    return w3, resolve_addresses(int(w3.eth.chain_id), ChainSettings(rpc_url=rpc_url))
