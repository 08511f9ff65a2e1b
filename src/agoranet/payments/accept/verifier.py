"""Checks on a ``batch-settlement`` voucher before a node accepts it.

Structure, channel config (receiver, receiver authorizer, token, withdraw
delay, network; the x402 SDK's own checks, remembered per channel by
:class:`ConfigCache`), the payer's EIP-712 signature (the SDK's typed data,
hashed here with a cached domain separator and recovered with libsecp256k1;
only canonical signatures, by the escrow contract's own rule, so every voucher
accepted can be claimed),
and the channel's on-chain state: funded, not withdrawing, and holding at
least the voucher's amount. On-chain state is cached per channel for
``ttl`` seconds and re-read on a miss (a voucher above the cached balance, or
a channel not seen yet), so the usual request costs no RPC call; reads run on
a small dedicated pool with short deadlines, and a channel already known is
served from its cached state while the chain does not answer (bounded
staleness: see :class:`StateCache`).
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from web3 import Web3
from web3.exceptions import Web3Exception
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.mechanisms.evm.batch_settlement.facilitator.utils import validate_channel_config
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import (
    channel_id_binding_error,
)
from x402.schemas import PaymentRequirements

from agoranet.chain.addresses import ChainAddresses
from agoranet.chain.executor import ChainExecutor
from agoranet.errors import ChainError, PaymentRequiredError
from agoranet.payments import payload_shapes
from agoranet.payments.accept.ledger import MAX_AMOUNT
from agoranet.payments.ecdsa import recover_address_bytes, signature_problem
from agoranet.payments.vouchers import voucher_digest

__all__ = [
    "ZERO_ADDRESS",
    "ConfigCache",
    "OnchainState",
    "StateCache",
    "Voucher",
    "Web3StateReader",
    "check_config",
    "check_signature",
    "check_state",
    "check_voucher",
    "parse_voucher",
]

ZERO_ADDRESS: Final = "0x0000000000000000000000000000000000000000"


@dataclass(frozen=True, slots=True)
class OnchainState:
    balance: int
    total_claimed: int
    withdraw_requested_at: int
    refund_nonce: int
    fetched_at: float

    def snapshot(self, channel_id: str) -> dict[str, Any]:
        """The x402 ``channelState`` fields mirrored from chain."""
        return {
            "channelId": channel_id,
            "balance": str(self.balance),
            "totalClaimed": str(self.total_claimed),
            "withdrawRequestedAt": self.withdraw_requested_at,
            "refundNonce": str(self.refund_nonce),
        }


class Web3StateReader:
    """Reads ``channels``, ``pendingWithdrawals`` and ``refundNonce`` from the escrow."""

    def __init__(self, w3: Web3, addresses: ChainAddresses) -> None:
        from agoranet.payments.channels import escrow_contract

        self.escrow: Any = escrow_contract(w3, addresses)

    def __call__(self, channel_id: str) -> OnchainState:
        cid = bytes.fromhex(channel_id.removeprefix("0x"))
        try:
            balance, claimed = self.escrow.functions.channels(cid).call()
            _, requested_at = self.escrow.functions.pendingWithdrawals(cid).call()
            nonce = self.escrow.functions.refundNonce(cid).call()
        except (OSError, ValueError, Web3Exception) as exc:
            raise ChainError(f"cannot read channel {channel_id}: {exc}") from exc
        return OnchainState(int(balance), int(claimed), int(requested_at), int(nonce),
                            time.monotonic())


class StateCache:
    """On-chain channel state, cached for ``ttl`` seconds; misses read on ``executor``.

    Reads run on a :class:`~agoranet.chain.executor.ChainExecutor` (a few dedicated
    threads, each read with a short deadline), so a frozen RPC neither stalls a
    request for long nor takes threads from anything else.

    *Stale while error.* When a read fails (error, deadline, every worker busy), a
    channel read before is served from its cached state if that state is at most
    ``max_stale`` seconds old and holds the voucher (``need`` within the cached
    balance); :func:`check_state` then applies as usual (funded, no withdrawal
    pending, above the cached claimed total). Why that is safe: vouchers are
    cumulative and the escrow caps every claim at the balance, and the balance only
    shrinks by the payer's withdrawal (the node's own claims and refunds it knows
    of), which completes no earlier than the channel's withdraw delay (at least
    900 s, bound into the channel's config) after it was initiated -- and the cached
    read showed none pending. So while ``max_stale`` plus the time the node needs
    to claim stays below that delay (the node caps ``max_stale`` at a third of it),
    every voucher accepted within the cached balance can still be claimed in full.
    What the cache cannot see only makes it stricter: a top-up (a voucher above the
    cached balance is refused) or a newer claim total. A channel never read, or
    read too long ago, gets a prompt 402 (``ERR_CHANNEL_STATE_READ_FAILED``) saying
    the chain did not answer.

    After a failed read the cache does not try the chain again for ``retry_after``
    seconds (known channels are served from cache, unknown ones refused, at once),
    so a frozen RPC costs one deadline, not one per request.

    At most ``max_entries`` channels are kept; the least recently used goes first
    (anyone can make up channels that pass the signature check and get read once).
    """

    def __init__(self, reader: Callable[[str], OnchainState], ttl: float, *,
                 executor: ChainExecutor | None = None, max_stale: float = 300.0,
                 retry_after: float | None = None, max_entries: int = 100_000) -> None:
        self._reader = reader
        self.ttl = ttl
        self.executor = executor or ChainExecutor()
        self.max_stale = max_stale
        self.retry_after = self.executor.timeout if retry_after is None else retry_after
        self.max_entries = max_entries
        self._states: OrderedDict[str, OnchainState] = OrderedDict()
        self._down_until = 0.0
        self._down_reason = ""

    async def get(self, channel_id: str, *, need: int = 0) -> OnchainState:
        cached = self._states.get(channel_id)
        if cached is not None:
            self._states.move_to_end(channel_id)
        fresh = cached is not None and time.monotonic() - cached.fetched_at <= self.ttl
        if cached is not None and fresh and cached.balance >= need:
            return cached
        try:
            return await self._read(channel_id)
        except PaymentRequiredError:
            usable = self._usable_stale(channel_id, need)
            if usable is None:
                raise
            return usable

    async def refresh(self, channel_id: str) -> OnchainState:
        """A fresh read (after a deposit, say: the chain just answered, so it is tried even
        within the back-off); 402 if the chain does not answer."""
        return await self._read(channel_id, force=True)

    def _usable_stale(self, channel_id: str, need: int) -> OnchainState | None:
        cached = self._states.get(channel_id)
        if cached is None or cached.balance < need:
            return None
        if time.monotonic() - cached.fetched_at > self.max_stale:
            return None
        return cached

    async def _read(self, channel_id: str, *, force: bool = False) -> OnchainState:
        now = time.monotonic()
        if now < self._down_until and not force:
            raise PaymentRequiredError(
                f"cannot read the channel's on-chain state: {self._down_reason} (retrying "
                f"in {self._down_until - now:.1f} s; try again shortly)",
                reason=bs_errors.ERR_CHANNEL_STATE_READ_FAILED)
        try:
            state = await self.executor.call(functools.partial(self._reader, channel_id),
                                             what=f"reading channel {channel_id[:10]}…")
        except ChainError as exc:
            self._down_until = time.monotonic() + self.retry_after
            self._down_reason = str(exc)
            raise PaymentRequiredError(
                f"cannot read the channel's on-chain state: {exc}",
                reason=bs_errors.ERR_CHANNEL_STATE_READ_FAILED,
            ) from exc
        self._down_until = 0.0
        self.put(channel_id, state)
        return state

    def put(self, channel_id: str, state: OnchainState) -> None:
        self._states[channel_id] = state
        self._states.move_to_end(channel_id)
        while len(self._states) > self.max_entries:
            self._states.popitem(last=False)

    def cached(self, channel_id: str) -> OnchainState | None:
        return self._states.get(channel_id)

    def __len__(self) -> int:
        return len(self._states)


@dataclass(frozen=True, slots=True)
class Voucher:
    """A parsed voucher payload (amounts as ints)."""

    kind: str
    channel_id: str
    config: ChannelConfig
    amount: int
    signature: str
    raw: dict[str, Any]


def _refuse(message: str, reason: str) -> PaymentRequiredError:
    return PaymentRequiredError(message, reason=reason)


def parse_voucher(payload: dict[str, Any]) -> Voucher:
    """The voucher in a ``voucher`` or ``deposit`` payload; 402 if malformed."""
    kind = payload.get("type")
    if kind not in ("voucher", "deposit"):
        raise _refuse(f"batch-settlement payload type {kind!r} is not accepted here "
                      "(send a voucher or a deposit)", bs_errors.ERR_INVALID_PAYLOAD_TYPE)
    try:
        voucher = payload["voucher"]
        if not isinstance(voucher, dict):
            raise ValueError("voucher is not an object")
        config = payload_shapes.channel_config(payload.get("channelConfig"))
        amount = payload_shapes.uint(voucher.get("maxClaimableAmount"),
                                     "voucher.maxClaimableAmount", 128)
        channel_id = payload_shapes.hex_bytes(voucher.get("channelId"), "voucher.channelId",
                                              32).lower()
        signature = payload_shapes.hex_bytes(voucher.get("signature"), "voucher.signature")
    except (KeyError, TypeError, ValueError) as exc:
        raise _refuse(f"malformed voucher payload: {exc}", bs_errors.ERR_VOUCHER_PAYLOAD) from None
    if amount <= 0 or amount > MAX_AMOUNT:
        raise _refuse(f"voucher amount {amount} is out of range", bs_errors.ERR_VOUCHER_PAYLOAD)
    return Voucher(kind, channel_id, config, amount, signature, payload)


def check_config(voucher: Voucher, requirements: PaymentRequirements, chain_id: int) -> None:
    """The channel config fits this node and hashes to the voucher's channel id; else 402.

    Depends only on the voucher's channel id and config and the node's terms, so
    a node may remember a pair that passed (see :class:`ConfigCache`).
    """
    binding = channel_id_binding_error(voucher.config, voucher.channel_id, chain_id)
    if binding:
        raise _refuse("the voucher's channel id is not the hash of its channel config on this "
                      "chain", binding)
    problem = validate_channel_config(voucher.config, voucher.channel_id, requirements)
    if problem:
        what = {
            bs_errors.ERR_RECEIVER_MISMATCH: f"the channel pays {voucher.config.receiver}, "
            f"not this node ({requirements.pay_to})",
            bs_errors.ERR_TOKEN_MISMATCH: f"the channel's token {voucher.config.token} is not "
            f"{requirements.asset}",
            bs_errors.ERR_RECEIVER_AUTHORIZER_MISMATCH: "the channel's receiver authorizer is "
            "not this node's",
        }.get(problem, f"the channel config does not fit this node ({problem})")
        raise _refuse(what, problem)
    if int(voucher.config.payer_authorizer, 16) == 0:
        raise _refuse("vouchers must be signed by an EOA payerAuthorizer (EIP-1271 payers are "
                      "not accepted by this node)", bs_errors.ERR_INVALID_VOUCHER_SIGNATURE)


def check_signature(voucher: Voucher, chain_id: int) -> None:
    """The voucher is signed by the channel's payer authorizer (EIP-712, ECDSA) with a
    canonical signature, the escrow's rule (:func:`~agoranet.payments.ecdsa.signature_problem`:
    one a claim can use); else 402."""
    try:
        raw = bytes.fromhex(voucher.signature.removeprefix("0x"))
    except ValueError:
        raw = b""
    problem = signature_problem(raw)
    if problem is not None:
        raise _refuse(f"the voucher's signature is not one the escrow contract accepts: "
                      f"{problem}; sign with a standard Ethereum wallet (low s, v 27 or 28)",
                      bs_errors.ERR_INVALID_VOUCHER_SIGNATURE)
    try:  # the 20 bytes compared: no checksummed spelling needed on either side
        signer = recover_address_bytes(
            voucher_digest(voucher.channel_id, voucher.amount, chain_id), raw)
        authorizer = bytes.fromhex(voucher.config.payer_authorizer.removeprefix("0x"))
    except ValueError:
        signer, authorizer = None, b""
    if signer is None or signer != authorizer:
        raise _refuse("the voucher is not signed by the channel's payer authorizer "
                      f"{voucher.config.payer_authorizer}", bs_errors.ERR_INVALID_VOUCHER_SIGNATURE)


def check_voucher(voucher: Voucher, requirements: PaymentRequirements, chain_id: int) -> None:
    """Config and signature checks (no chain access); 402 with the x402 reason if wrong."""
    check_config(voucher, requirements, chain_id)
    check_signature(voucher, chain_id)


class ConfigCache:
    """Channel (id, config) pairs that passed :func:`check_config` for one node's terms."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._ok: dict[str, tuple[object, ...]] = {}

    def check(self, voucher: Voucher, requirements: PaymentRequirements, chain_id: int) -> None:
        config = voucher.config
        key = (config.payer, config.payer_authorizer, config.receiver,
               config.receiver_authorizer, config.token, config.withdraw_delay, config.salt)
        if self._ok.get(voucher.channel_id) == key:
            return
        check_config(voucher, requirements, chain_id)
        if len(self._ok) >= self.limit:
            self._ok.clear()
        self._ok[voucher.channel_id] = key


def check_state(voucher: Voucher, state: OnchainState) -> None:
    """On-chain checks: funded, not withdrawing, voucher within the deposit."""
    if state.balance == 0:
        raise _refuse("the channel holds no deposit (never funded, or closed)",
                      bs_errors.ERR_CHANNEL_NOT_FOUND)
    if state.withdraw_requested_at != 0:
        raise _refuse("the channel has a pending withdrawal: it takes no new vouchers",
                      "invalid_batch_settlement_evm_channel_withdrawing")
    if voucher.amount > state.balance:
        raise _refuse(f"voucher for {voucher.amount} exceeds the channel's deposit "
                      f"({state.balance}): top the channel up",
                      bs_errors.ERR_CUMULATIVE_EXCEEDS_BALANCE)
    if voucher.amount <= state.total_claimed:
        raise _refuse(f"voucher for {voucher.amount} is not above what was already claimed "
                      f"({state.total_claimed})", bs_errors.ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED)
