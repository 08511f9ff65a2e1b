"""JSON-RPC access with web3.py: connect, send locally signed transactions, dev-chain calls.

Everything outside the dev-chain launcher reaches a chain only through its RPC
URL. web3 and transport errors are converted here into :class:`ChainError` and
:class:`ContractError` with one readable line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception

from agoranet.errors import ChainError, ContractError

__all__ = [
    "DEV_CHAIN_ID",
    "TxResult",
    "connect",
    "dev_rpc",
    "http_provider",
    "increase_time",
    "send",
    "sending",
    "transfer_native",
]

DEV_CHAIN_ID: Final = 31337
_TIMEOUT: Final = 10.0
_GAS_MARGIN_DIVISOR: Final = 5  # +20% over the estimate
_GAS_MARGIN_MIN: Final = 10_000


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction."""

    tx_hash: str
    gas_used: int
    block_number: int


def http_provider(rpc_url: str, *, timeout: float = _TIMEOUT, retry: bool = True) -> HTTPProvider:
    """An HTTP JSON-RPC provider whose every request gives up after ``timeout`` seconds.

    ``retry=False`` turns off web3's own retries (5 by default, with backoff), which
    would otherwise make one call to an RPC that never answers take about
    ``5 * timeout`` seconds; code on a request path wants one short try.
    """
    if not rpc_url.startswith(("http://", "https://")):
        raise ChainError(f"RPC URL {rpc_url!r} must start with http:// or https://")
    if retry:
        return HTTPProvider(rpc_url, request_kwargs={"timeout": timeout})
    return HTTPProvider(rpc_url, request_kwargs={"timeout": timeout},
                        exception_retry_configuration=None)


def connect(rpc_url: str, *, timeout: float = _TIMEOUT, retry: bool = True) -> Web3:
    """A connected :class:`Web3`, or :class:`ChainError` if nothing answers at ``rpc_url``.

    Every JSON-RPC request gives up after ``timeout`` seconds (see :func:`http_provider`).
    """
    w3 = Web3(http_provider(rpc_url, timeout=timeout, retry=retry))
    try:
        w3.eth.chain_id  # noqa: B018 - a cheap call that proves the endpoint answers
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"RPC URL {rpc_url} is unreachable: {_short(exc)}") from exc
    return w3


def send(w3: Web3, account: LocalAccount, call: Any, what: str, *, value: int = 0) -> TxResult:
    """Sign ``call`` (a bound contract function) with ``account`` locally and wait for it.

    A revert (at gas estimation or in the mined block) becomes :class:`ContractError`
    naming ``what`` and the contract's reason.
    """
    with sending(account.address):
        try:
            tx = call.build_transaction(
                {
                    "from": account.address,
                    "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                    "chainId": w3.eth.chain_id,
                    "value": value,
                }
            )
            tx["gas"] = _with_margin(w3, int(tx["gas"]))
        except ContractLogicError as exc:
            raise ContractError(f"{what} reverted: {_reason(exc)}") from exc
        except (OSError, ValueError, Web3Exception) as exc:
            raise ChainError(f"{what} failed: {_short(exc)}") from exc
        tx_hash = _sign_and_send(w3, account, tx, what)
    return _wait(w3, tx_hash, what)


def _with_margin(w3: Web3, estimate: int) -> int:
    """``estimate`` plus a margin, within the latest block's gas limit.

    An estimate is exact only for the state and block it ran against: a node
    estimates against the latest block, the transaction is mined in a later one.
    A contract that stores ``block.timestamp`` (the registry's ``updatedAt``)
    writes an unchanged slot (100 gas) in the estimate but a changed one (2,900)
    once mined a second later, and an exact limit then runs out of gas.
    """
    limit = int(w3.eth.get_block("latest")["gasLimit"])
    return min(limit, estimate + max(estimate // _GAS_MARGIN_DIVISOR, _GAS_MARGIN_MIN))


def transfer_native(w3: Web3, account: LocalAccount, to: str, amount: int) -> TxResult:
    """Send ``amount`` wei from ``account`` to ``to``."""
    with sending(account.address):
        tx: dict[str, Any] = {
            "from": account.address,
            "to": to,
            "value": amount,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "chainId": w3.eth.chain_id,
            "gas": 21_000,
        }
        try:
            fees = _fees(w3)
        except (OSError, ValueError, Web3Exception) as exc:
            raise ChainError(f"native transfer failed: {_short(exc)}") from exc
        tx.update(fees)
        tx_hash = _sign_and_send(w3, account, tx, "native transfer")
    return _wait(w3, tx_hash, "native transfer")


def dev_rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    """Call a dev-node method (``evm_mine``, ``anvil_*``); refuses off the dev chain."""
    chain_id = w3.eth.chain_id
    if chain_id != DEV_CHAIN_ID:
        raise ChainError(f"{method} is only used on the dev chain (31337), not chain {chain_id}")
    try:
        response = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"{method} failed: {_short(exc)}") from exc
    if "error" in response:
        raise ChainError(f"{method} failed: {response['error']}")
    return response.get("result")


def increase_time(w3: Web3, seconds: int) -> None:
    """Advance the dev chain's clock by ``seconds`` and mine a block (31337 only)."""
    dev_rpc(w3, "evm_increaseTime", [seconds])
    dev_rpc(w3, "evm_mine", [])


_senders: dict[str, threading.Lock] = {}
_senders_lock = threading.Lock()


def sending(address: str) -> threading.Lock:
    """Held by whoever picks ``address``'s next nonce in this process until the transaction
    is sent: two threads sending from one account at once (a gateway opening channels to
    several sellers) would otherwise both take the same pending nonce."""
    with _senders_lock:
        return _senders.setdefault(address.lower(), threading.Lock())


def _sign_and_send(w3: Web3, account: LocalAccount, tx: dict[str, Any], what: str) -> Any:
    try:
        return w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    except ContractLogicError as exc:
        raise ContractError(f"{what} reverted: {_reason(exc)}") from exc
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"{what} failed: {_short(exc)}") from exc


def _wait(w3: Web3, tx_hash: Any, what: str) -> TxResult:
    try:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    except ContractLogicError as exc:
        raise ContractError(f"{what} reverted: {_reason(exc)}") from exc
    except TimeExhausted as exc:
        raise ChainError(f"{what}: no receipt within 120 s") from exc
    except (OSError, ValueError, Web3Exception) as exc:
        raise ChainError(f"{what} failed: {_short(exc)}") from exc
    if receipt["status"] != 1:
        raise ContractError(f"{what} reverted in block {receipt['blockNumber']}")
    return TxResult(
        tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
        gas_used=int(receipt["gasUsed"]),
        block_number=int(receipt["blockNumber"]),
    )


def _fees(w3: Web3) -> dict[str, int]:
    base = int(w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
    tip = int(w3.eth.max_priority_fee)
    return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}


def _reason(exc: ContractLogicError) -> str:
    message = str(exc.message or exc)
    return (
        message.removeprefix("execution reverted: ").removeprefix("execution reverted")
        or "no reason"
    )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
