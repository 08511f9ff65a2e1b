"""The local dev chain: Foundry's ``anvil`` with agoranet's contracts installed.

:func:`start_devchain` launches anvil, deploys our contracts with web3.py, copies
their runtime code and storage to fixed addresses (the escrow, its collector
and Multicall3 at the addresses the x402 SDK expects), and mints test
stablecoin to anvil's deterministic dev accounts. With ``state_file`` anvil
loads and saves its state there, so a restarted chain keeps its balances.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from eth_account import Account
from web3 import HTTPProvider, Web3
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.constants import MULTICALL3_ADDRESS

from agoranet.api.listening import listens
from agoranet.chain.compiled import CompiledContract, load_artifact
from agoranet.errors import DevChainError

__all__ = [
    "ANVIL_ENV_VAR",
    "DEFAULT_CHAIN_ID",
    "DEV_MNEMONIC",
    "REGISTRY_ADDRESS",
    "STABLECOIN_ADDRESS",
    "DevChain",
    "find_anvil",
    "install_contracts",
    "start_devchain",
]

ANVIL_ENV_VAR: Final = "AGORANET_ANVIL"
DEFAULT_CHAIN_ID: Final = 31337
DEV_MNEMONIC: Final = "test test test test test test test test test test test junk"
STABLECOIN_ADDRESS: Final = Web3.to_checksum_address("0xa6e0000000000000000000000000000000000001")
REGISTRY_ADDRESS: Final = Web3.to_checksum_address("0xa6e0000000000000000000000000000000000002")
DEFAULT_MINT: Final = 1_000_000 * 10**6  # one million stablecoin per dev account

_NPM_BIN: Final = Path("node_modules") / "@foundry-rs"


@dataclass
class DevChain:
    """A running dev chain; use as a context manager or call :meth:`stop`."""

    rpc_url: str
    chain_id: int
    stablecoin: str
    escrow: str
    collector: str
    registry: str
    multicall: str
    accounts: tuple[str, ...]
    private_keys: tuple[str, ...]
    state_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def network(self) -> str:
        """The CAIP-2 network id (``eip155:<chainId>``)."""
        return f"eip155:{self.chain_id}"

    def web3(self) -> Web3:
        return Web3(HTTPProvider(self.rpc_url))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop anvil (it writes ``state_file`` on a clean exit)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def __enter__(self) -> DevChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_anvil(search_from: Path | None = None) -> Path:
    """``$AGORANET_ANVIL``, an npm ``.tools`` folder above ``search_from`` (or cwd), or PATH."""
    override = os.environ.get(ANVIL_ENV_VAR)
    if override:
        path = Path(override)
        if path.is_file():
            return path
        raise DevChainError(f"{ANVIL_ENV_VAR}={override} is not a file")
    start = (search_from or Path.cwd()).resolve()
    roots = [start, *start.parents, Path(__file__).resolve().parents[3]]
    for root in roots:
        base = root / ".tools" / _NPM_BIN
        if base.is_dir():
            for candidate in sorted(base.glob("anvil-*/bin/anvil")):
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return candidate
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise DevChainError(
        "anvil not found: install it with `npm install --prefix .tools @foundry-rs/anvil`, "
        f"put it on PATH, or set {ANVIL_ENV_VAR}"
    )


def start_devchain(
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    chain_id: int = DEFAULT_CHAIN_ID,
    state_file: Path | None = None,
    accounts: int = 10,
    mint: int = DEFAULT_MINT,
    anvil: Path | None = None,
    startup_timeout: float = 30.0,
    from_source: bool = False,
) -> DevChain:
    """Start anvil and make sure our contracts are installed; ``port=0`` picks a free one.

    The contracts are the shipped artefacts, or with ``from_source`` compiled from their
    Vyper sources (needs the ``vyper`` package: for contract development).
    """
    binary = anvil or find_anvil()
    if port:
        _check_port_free(host, port)  # else the chain already there answers as if ours
    if state_file is not None:
        state_file = state_file.resolve()
        state_file.parent.mkdir(parents=True, exist_ok=True)
    keys = tuple(_dev_key(i) for i in range(accounts))
    # A port picked here is free only until anvil binds it: another process may take it
    # meanwhile (then anvil fails to bind, and another port is tried).
    for attempt in range(1 if port else _PORT_TRIES):
        chosen = port or _free_port(host)
        cmd = [
            str(binary),
            "--host", host,
            "--port", str(chosen),
            "--chain-id", str(chain_id),
            "--accounts", str(accounts),
            "--mnemonic", DEV_MNEMONIC,
            "--hardfork", "prague",
            "--silent",
        ]  # fmt: skip
        if state_file is not None:
            cmd += ["--state", str(state_file)]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            raise DevChainError(f"cannot start anvil ({binary}): {exc}") from exc
        rpc_url = f"http://{host}:{chosen}"
        chain = DevChain(
            rpc_url=rpc_url,
            chain_id=chain_id,
            stablecoin=STABLECOIN_ADDRESS,
            escrow=BATCH_SETTLEMENT_ADDRESS,
            collector=ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            registry=REGISTRY_ADDRESS,
            multicall=Web3.to_checksum_address(MULTICALL3_ADDRESS),
            accounts=tuple(Account.from_key(k).address for k in keys),
            private_keys=keys,
            state_file=state_file,
            process=proc,
        )
        try:
            w3 = _wait_ready(rpc_url, proc, startup_timeout)
            break
        except DevChainError as exc:
            chain.stop()
            if port or attempt + 1 == _PORT_TRIES or \
                    "address already in use" not in str(exc).lower():
                raise
        except BaseException:
            chain.stop()
            raise
    try:
        if w3.eth.get_code(STABLECOIN_ADDRESS) == b"":
            install_contracts(w3, chain.accounts, mint=mint, from_source=from_source)
    except BaseException:
        chain.stop()
        raise
    return chain


def install_contracts(w3: Web3, accounts: tuple[str, ...], *, mint: int = DEFAULT_MINT,
                      from_source: bool = False) -> None:
    """Deploy, install at the fixed addresses, and mint ``mint`` to each account.

    ``accounts[0]`` (unlocked in anvil) deploys and becomes the stablecoin's minter. The
    contracts are the shipped artefacts, or compiled from source with ``from_source``.
    """
    deployer = accounts[0]
    compile_contract = _compile_from_source if from_source else load_artifact
    token = compile_contract("Stablecoin")
    escrow = compile_contract("BatchSettlement")
    collector = compile_contract("Erc3009DepositCollector")
    _install(w3, token, _deploy(w3, deployer, token), STABLECOIN_ADDRESS)
    _install(w3, escrow, _deploy(w3, deployer, escrow), BATCH_SETTLEMENT_ADDRESS)
    collector_at = _deploy(w3, deployer, collector, BATCH_SETTLEMENT_ADDRESS)
    _install(w3, collector, collector_at, ERC3009_DEPOSIT_COLLECTOR_ADDRESS)
    registry = compile_contract("ProviderRegistry")
    _install(w3, registry, _deploy(w3, deployer, registry), REGISTRY_ADDRESS)
    multicall = compile_contract("Multicall3")
    if w3.eth.get_code(Web3.to_checksum_address(MULTICALL3_ADDRESS)) == b"":
        _install(w3, multicall, _deploy(w3, deployer, multicall), MULTICALL3_ADDRESS)
    stablecoin = w3.eth.contract(address=STABLECOIN_ADDRESS, abi=token.abi)
    for account in accounts:
        tx = stablecoin.functions.mint(account, mint).transact({"from": deployer})
        _check_receipt(w3, tx, f"mint to {account}")


def _compile_from_source(name: str) -> CompiledContract:
    from agoranet.chain.compiler import compile_contract  # vyper: contract development only

    return compile_contract(name)


def _deploy(w3: Web3, deployer: str, compiled: CompiledContract, *args: Any) -> str:
    factory = w3.eth.contract(abi=compiled.abi, bytecode=compiled.bytecode)
    tx = factory.constructor(*args).transact({"from": deployer})
    receipt = _check_receipt(w3, tx, f"deploy {compiled.name}")
    return str(receipt["contractAddress"])


def _install(w3: Web3, compiled: CompiledContract, source: str, target: str) -> None:
    """Copy runtime code and the top-level storage slots from ``source`` to ``target``."""
    target = Web3.to_checksum_address(target)
    _rpc(w3, "anvil_setCode", [target, "0x" + compiled.runtime_bytecode.hex()])
    for slot in compiled.storage_slots.values():
        value = w3.eth.get_storage_at(Web3.to_checksum_address(source), slot)
        _rpc(w3, "anvil_setStorageAt", [target, _word(slot), "0x" + bytes(value).hex()])


def _check_receipt(w3: Web3, tx: Any, what: str) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    if receipt["status"] != 1:
        raise DevChainError(f"dev chain setup failed: {what} reverted")
    return receipt


def _rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    response = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    if "error" in response:
        raise DevChainError(f"{method} failed: {response['error']}")
    return response.get("result")


def _word(n: int) -> str:
    return "0x" + n.to_bytes(32, "big").hex()


def _dev_key(index: int) -> str:
    Account.enable_unaudited_hdwallet_features()
    acct = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(acct.key).hex()


_PORT_TRIES = 3


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DevChainError(f"cannot start anvil on {host}:{port}: "
                                f"{exc.strerror or exc} (is a chain already "
                                "running there?)") from exc


def _wait_ready(rpc_url: str, proc: subprocess.Popen[bytes], timeout: float) -> Web3:
    port = urlsplit(rpc_url).port or 80
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 5}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise DevChainError(f"anvil exited with {proc.returncode}: {err.strip()[-2000:]}")
        try:  # ours: not another chain on the port while ours fails to bind it
            if w3.is_connected() and listens(proc.pid, port):
                return w3
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise DevChainError(f"anvil did not answer on {rpc_url} within {timeout:.0f}s")
