"""Checks a command makes before long work (loading a model, starting a chain).

Each failed check is one plain line (a :class:`~agoranet.errors.ConfigError` or
:class:`~agoranet.errors.ChainError` that ``agoranet``'s entry point prints)
naming what to do, instead of a raw socket or web3 error minutes later.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from agoranet.errors import ChainError, ConfigError

if TYPE_CHECKING:
    from web3 import Web3

__all__ = [
    "DEFAULT_MODEL_DIR",
    "REGISTER_GAS",
    "LedgerLock",
    "check_model_dir",
    "check_port_free",
    "connect_chain_or_hint",
    "format_eth",
    "gas_cost",
    "hold_ledger",
    "native_balance",
    "require_gas",
]

DEFAULT_MODEL_DIR: Final = "models/tiny"  # the transformers engine's default (engines.hf)
REGISTER_GAS: Final = 200_000  # a first registration costs about 180,000


def check_port_free(host: str, port: int, what: str, option: str = "--port") -> None:
    """ConfigError unless ``host:port`` can be listened on now (port 0: any, not checked)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and anvil
        try:
            sock.bind(address)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"cannot listen on {host}:{port}: {reason} (is another "
                              f"{what} running there?); choose another port with {option}"
                              ) from exc


def check_model_dir(model: str | None) -> None:
    """The default model (``models/tiny``, relative to the current directory) must exist:
    it is a local directory, never a Hub id (``org/name``) to fetch."""
    if model not in (None, DEFAULT_MODEL_DIR):
        return
    path = Path(DEFAULT_MODEL_DIR)
    if not path.is_dir():
        raise ConfigError(f"model {DEFAULT_MODEL_DIR}: no such directory in {Path.cwd()}; "
                          "build it with `agoranet model tiny`, or give --model DIR or Hub id")


def connect_chain_or_hint(rpc_url: str) -> Web3:
    """A connected Web3 at ``rpc_url``, or a ChainError that says how to start a chain."""
    from agoranet.chain.rpc import connect, http_provider

    http_provider(rpc_url)  # a malformed URL is its own error
    try:
        return connect(rpc_url)
    except ChainError as exc:
        raise ChainError(f"no chain answers at {rpc_url}; start the dev chain with "
                         "`agoranet chain`, or give --rpc-url") from exc


def native_balance(w3: Web3, address: str) -> int:
    """``address``'s native balance in wei (ChainError if the chain does not answer)."""
    from web3 import Web3 as _Web3
    from web3.exceptions import Web3Exception

    try:
        return int(w3.eth.get_balance(_Web3.to_checksum_address(address)))
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"cannot read the balance of {address}: {exc}") from exc


def gas_cost(w3: Web3, gas: int) -> int:
    """What ``gas`` units cost at most at the current fees (wei), as a transaction pays."""
    from web3.exceptions import Web3Exception

    try:
        base = int(w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        tip = int(w3.eth.max_priority_fee)
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"cannot read the chain's gas fees: {exc}") from exc
    return gas * (2 * base + tip)


def format_eth(wei: int) -> str:
    """``wei`` in ETH without trailing zeros (``0``, ``0.0021``, ``1``)."""
    from agoranet.payments.amounts import NATIVE_DECIMALS, format_amount

    text = format_amount(wei, NATIVE_DECIMALS)
    return text.rstrip("0").rstrip(".") if "." in text else text


def require_gas(w3: Web3, address: str, gas: int, what: str) -> None:
    """ConfigError unless ``address`` can pay ``gas`` units for ``what``."""
    have, need = native_balance(w3, address), gas_cost(w3, gas)
    if have < need:
        raise ConfigError(
            f"{address} has {format_eth(have)} ETH, too little for the gas of {what} "
            f"(about {format_eth(need)} ETH); fund it (dev chain: `agoranet wallet fund`)")


class LedgerLock:
    """An exclusive lock on a node's ledger, held while the process runs (see :func:`hold_ledger`)."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def release(self) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def hold_ledger(ledger: Path) -> LedgerLock:
    """Lock ``ledger`` for this process (``<ledger>.lock``); ConfigError if another process
    (a running node, or ``agoranet node claim``) holds it."""
    lock_path = ledger.with_name(ledger.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"the ledger {ledger} is in use by {holder}; a node claims by "
                          "itself while it runs (stop it first to run another on this "
                          "ledger or to claim from here)") from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    return LedgerLock(handle)
