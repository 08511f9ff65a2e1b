"""The wallet: one key in an encrypted keystore, its balances, and dev-chain funding.

The keystore is Web3 Secret Storage (scrypt) written by
:func:`eth_account.Account.encrypt`; the key is decrypted only in memory, never
printed or logged. Exports go to new files created with mode 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import Web3Exception

from agoranet.chain.addresses import ChainAddresses
from agoranet.chain.compiled import contract_abi
from agoranet.chain.devchain import DEV_MNEMONIC
from agoranet.chain.rpc import DEV_CHAIN_ID, TxResult, send, transfer_native
from agoranet.config import default_home
from agoranet.errors import ChainError, WalletError, WrongPasswordError

__all__ = [
    "DEFAULT_SCRYPT_N",
    "PASSWORD_ENV_VAR",
    "Balances",
    "balances",
    "create_keystore",
    "default_keystore",
    "dev_deployer",
    "fund_dev",
    "keystore_address",
    "stablecoin_contract",
    "unlock",
    "write_private",
]

PASSWORD_ENV_VAR: Final = "AGORANET_WALLET_PASSWORD"
DEFAULT_SCRYPT_N: Final = 2**18  # eth-account's default work factor


def default_keystore() -> Path:
    """``<home>/wallet/keystore.json`` (home from ``AGORANET_HOME``, else ``~/.agoranet``)."""
    return default_home() / "wallet" / "keystore.json"


def create_keystore(
    path: Path,
    password: str,
    *,
    private_key: bytes | None = None,
    scrypt_n: int = DEFAULT_SCRYPT_N,
) -> str:
    """Write a new keystore (a fresh key unless ``private_key``); its address.

    Refuses to overwrite an existing file.
    """
    if not password:
        raise WalletError("the wallet password must not be empty")
    account: LocalAccount = (
        Account.from_key(private_key) if private_key is not None else Account.create()
    )
    keystore = Account.encrypt(account.key, password, kdf="scrypt", iterations=scrypt_n)
    write_private(path, json.dumps(keystore, indent=2) + "\n")
    return str(account.address)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WalletError(f"no wallet at {path}: create one with `agoranet wallet new`") from None
    except (OSError, ValueError) as exc:
        raise WalletError(f"cannot read keystore {path}: {exc}") from exc
    if not isinstance(data, dict) or ("crypto" not in data and "Crypto" not in data):
        raise WalletError(f"{path} is not a Web3 Secret Storage keystore")
    return data


def keystore_address(path: Path) -> str:
    """The keystore's address, read without the password."""
    data = _read(path)
    address = data.get("address")
    if not isinstance(address, str):
        raise WalletError(f"keystore {path} has no address field")
    return Web3.to_checksum_address("0x" + address.removeprefix("0x"))


def unlock(path: Path, password: str) -> LocalAccount:
    """Decrypt the keystore; :class:`WrongPasswordError` if the password is wrong."""
    data = _read(path)
    try:
        key = Account.decrypt(data, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise WrongPasswordError(f"wrong password for keystore {path}") from None
        raise WalletError(f"cannot decrypt keystore {path}: {exc}") from None
    account: LocalAccount = Account.from_key(key)
    return account


def write_private(path: Path, text: str) -> None:
    """Create ``path`` (not existing before) with mode 0600 and write ``text``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise WalletError(f"{path} already exists; not overwriting it") from None
    except OSError as exc:
        raise WalletError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    path.chmod(0o600)  # in case the umask or filesystem widened it


@dataclass(frozen=True)
class Balances:
    """Native (wei) and stablecoin (base units) balances of one address."""

    address: str
    native: int
    stablecoin: int | None


def stablecoin_contract(w3: Web3, addresses: ChainAddresses) -> Any:
    """The chain's stablecoin as a web3 contract (ERC-20 + our mint ABI)."""
    return w3.eth.contract(
        address=Web3.to_checksum_address(addresses.require_stablecoin()),
        abi=contract_abi("Stablecoin"),
    )


def balances(w3: Web3, addresses: ChainAddresses, address: str) -> Balances:
    try:
        native = int(w3.eth.get_balance(Web3.to_checksum_address(address)))
        coin: int | None = None
        if addresses.stablecoin is not None:
            if w3.eth.get_code(Web3.to_checksum_address(addresses.stablecoin)) == b"":
                raise ChainError(
                    f"no contract at stablecoin address {addresses.stablecoin} on chain "
                    f"{addresses.chain_id}"
                )
            coin = int(stablecoin_contract(w3, addresses).functions.balanceOf(address).call())
    except ChainError:
        raise
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"cannot read balances: {' '.join(str(exc).split())[:300]}") from exc
    return Balances(address=address, native=native, stablecoin=coin)


def dev_deployer() -> LocalAccount:
    """The dev chain's deployer (anvil's account 0 of the dev mnemonic), the stablecoin's minter."""
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(DEV_MNEMONIC, account_path="m/44'/60'/0'/0/0")
    return account


def fund_dev(
    w3: Web3, addresses: ChainAddresses, to: str, *, stablecoin: int, native: int
) -> list[TxResult]:
    """Mint ``stablecoin`` and send ``native`` wei to ``to``: only on the dev chain.

    Refuses unless the chain id is 31337 and the stablecoin's minter is the dev
    deployer, since that is the only place where minting test money makes sense.
    """
    chain_id = int(w3.eth.chain_id)
    if chain_id != DEV_CHAIN_ID:
        raise WalletError(
            f"fund works only on the local dev chain (chain id {DEV_CHAIN_ID}); this RPC URL "
            f"serves chain {chain_id}: get test funds from that chain's faucet instead"
        )
    deployer = dev_deployer()
    token = stablecoin_contract(w3, addresses)
    try:
        minter = str(token.functions.minter().call())
    except (OSError, ValueError, Web3Exception) as exc:  # no contract, or not ours
        raise WalletError(
            f"the stablecoin at {addresses.stablecoin} is not agoranet's dev Stablecoin "
            "(is `agoranet chain` running at this RPC URL?)"
        ) from exc
    if minter != deployer.address:
        raise WalletError(f"the stablecoin's minter is {minter}, not the dev deployer")
    done: list[TxResult] = []
    if stablecoin:
        done.append(send(w3, deployer, token.functions.mint(to, stablecoin), "mint"))
    if native:
        done.append(transfer_native(w3, deployer, to, native))
    return done
