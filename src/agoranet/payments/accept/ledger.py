"""The node's money ledger: the interface, its records, and the refusals it gives.

Per channel the ledger keeps what the node has charged (``charged``, the x402
``chargedCumulativeAmount``), the highest voucher it accepted and that
voucher's signature, what it has claimed on chain, and the request holding the
channel right now, if any. A request first *accepts* a voucher (persisted,
before any inference). While it streams, the node may record *running
receipts* (:meth:`Ledger.progress`): signed receipts for the part of the answer
already sent, each persisted before it goes out. The request then either
*commits* its actual charge (which writes the final signed receipt) or is
*released*: charged what its last running receipt says, or nothing (the
previous voucher restored) if it sent none. A node killed mid-stream is
released the same way by :meth:`Ledger.recover` after its restart, so the
buyer and the node agree on every charge: each is backed by a receipt the
buyer holds. Every money value is an ``int`` in base units; every operation on
one channel is atomic, so two requests can never spend the same headroom.

Implementations: :class:`~agoranet.payments.accept.sqlite_ledger.SqliteLedger`
(one file per node) and :class:`~agoranet.payments.accept.pg_ledger.PgLedger`
(PostgreSQL, shared by replicas of one node: ``SELECT ... FOR UPDATE`` on the
channel's row in place of SQLite's write lock, and a lease per replica so a
dead replica's holds are released by the others). One conformance suite
(tests/payments/test_ledger*.py) runs against both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from agoranet.errors import LedgerError
from agoranet.payments.receipts import Receipt

__all__ = [
    "MAX_AMOUNT",
    "ChannelRecord",
    "ClaimCandidate",
    "ClaimFailure",
    "Earnings",
    "Hold",
    "Ledger",
    "RefusalReason",
    "VoucherRefused",
    "check_amount",
    "request_id_in_use",
]

MAX_AMOUNT: Final = 2**63 - 1  # SQLite INTEGER, PostgreSQL BIGINT; far above any real deposit

RefusalReason = Literal["busy", "mismatch", "charged", "unknown-channel", "request-id-in-use"]


class VoucherRefused(LedgerError):
    """The ledger refused a voucher; ``channel`` is its state for a corrective 402, and
    ``receipt`` the request's receipt (``charged``) or the channel's latest one
    (``mismatch``: what backs the charged total the corrective 402 states)."""

    def __init__(self, reason: RefusalReason, message: str,
                 channel: ChannelRecord | None = None, receipt: Receipt | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.channel = channel
        self.receipt = receipt


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    channel_id: str
    config: str  # the x402 ChannelConfig as JSON
    payer: str
    charged: int
    voucher_amount: int
    voucher_signature: str
    claimed: int
    pending_request: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """An accepted voucher holding its channel for one request."""

    request_id: str
    channel_id: str
    voucher_amount: int
    max_amount: int
    charged_before: int


@dataclass(frozen=True, slots=True)
class ClaimCandidate:
    """A channel whose charged total is above what has been claimed on chain."""

    channel_id: str
    config: str
    charged: int
    claimed: int
    voucher_amount: int
    voucher_signature: str
    oldest_unclaimed_at: float
    unclaimed_requests: int

    @property
    def unclaimed(self) -> int:
        return self.charged - self.claimed


@dataclass(frozen=True, slots=True)
class ClaimFailure:
    """A channel whose claim keeps failing on chain: set aside until ``retry_at``."""

    channel_id: str
    failures: int
    last_error: str
    first_failed_at: float
    retry_at: float


@dataclass(frozen=True, slots=True)
class Earnings:
    channel_id: str
    payer: str
    charged: int
    claimed: int
    settled: int
    requests: int
    pending_settle: int = 0  # claimed on chain, not yet settled to the node
    claim_failures: int = 0  # consecutive failed claims (0: none)
    claim_error: str = ""  # the last one's error

    @property
    def unclaimed(self) -> int:
        return self.charged - self.claimed


class Ledger(Protocol):
    """What the payment middleware and the settlement loop need from storage."""

    def ensure_channel(self, channel_id: str, config: str, payer: str,
                       baseline: int) -> ChannelRecord:
        """The channel's record, created with ``charged = claimed = baseline`` if new."""
        ...

    def channel(self, channel_id: str) -> ChannelRecord | None: ...

    def accept_voucher(self, request_id: str, channel_id: str, voucher_amount: int,
                       signature: str, max_amount: int) -> Hold:
        """Persist the voucher and hold the channel, or raise :class:`VoucherRefused`.

        Accepted iff the channel is not held and ``voucher_amount`` equals
        ``charged + max_amount`` (the x402 ``batch-settlement`` EVM rule; a voucher
        below an earlier one is fine, since only ``charged`` is ever claimed), and
        ``request_id`` names no request of another channel (``request-id-in-use``,
        which tells nothing of that channel; on its own channel a charged request is
        refused as ``charged`` with its receipt, a released one may be held again).
        """
        ...

    def commit(self, hold: Hold, tokens_in: int, tokens_out: int, amount: int,
               sign: Callable[[Receipt], Receipt], chain_id: int) -> Receipt:
        """Charge ``amount`` (at most the hold's maximum), release the hold, store the receipt.

        Idempotent on the request id: a second commit returns the first receipt.
        """
        ...

    def progress(self, hold: Hold, tokens_in: int, tokens_out: int, amount: int,
                 sign: Callable[[Receipt], Receipt], chain_id: int) -> Receipt:
        """Persist a running receipt for the answer streamed so far (before it is sent).

        Its amount (at most the hold's maximum) never falls below an earlier running
        receipt's; it is what the request is charged if it ends without a commit.
        """
        ...

    def release(self, hold: Hold) -> Receipt | None:
        """Give the hold up: charge the last running receipt (returned) if there is one,
        else nothing, and the previous voucher becomes current."""
        ...

    def retract(self, hold: Hold) -> None:
        """Undo the hold of a request refused before it was served (its own fault: a body
        found bad while it was priced, a voucher short of what it may cost; or its client
        gone) as if the voucher had never been offered: its row is deleted, the previous
        voucher becomes current, and a channel row made for it alone is deleted too (it
        holds no voucher, receipt or claim). Nothing if the request holds nothing; a hold
        that sent a running receipt was served, and is released instead."""
        ...

    def recover(self) -> int:
        """After a restart: release every hold left by the previous process; how many."""
        ...

    def claim_candidates(self) -> list[ClaimCandidate]: ...

    def record_claim(self, totals: dict[str, int], tx_hash: str, gas_used: int) -> None:
        """Channels' new on-chain claimed totals after one claim transaction."""
        ...

    def record_settle(self, tx_hash: str, amount: int, gas_used: int) -> None:
        """A settle (of every claim not settled yet) went through."""
        ...

    def unsettled(self) -> int:
        """What claims have moved on chain that no settle has swept to the node yet."""
        ...

    def record_claim_failure(self, channel_id: str, error: str, now: float,
                             backoff: Callable[[int], float]) -> ClaimFailure:
        """A claim for ``channel_id`` failed at ``now``: set it aside for
        ``backoff(failures in a row)`` seconds (a successful claim clears the count)."""
        ...

    def claim_failures(self) -> list[ClaimFailure]: ...

    def earnings(self) -> list[Earnings]: ...

    def receipts(self, channel_id: str | None = None) -> list[Receipt]: ...

    def close(self) -> None: ...


def request_id_in_use(request_id: str) -> VoucherRefused:
    """The refusal of ``request_id`` on a channel when another channel's request has it: it
    carries nothing of that channel (no receipt, no state), and nothing is held."""
    return VoucherRefused("request-id-in-use", f"request id {request_id} is taken by a request on "
                          "another channel: choose another request id (one per request)")


def check_amount(value: int, what: str) -> int:
    if value < 0 or value > MAX_AMOUNT:
        raise LedgerError(f"{what} {value} is out of range")
    return value
