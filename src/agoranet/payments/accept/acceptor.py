"""The node's side of x402: requirements, accepting payments, charging, receipts.

:class:`PaymentAcceptor` knows nothing of HTTP. For a request whose worst case
is ``worst`` base units it builds the 402 requirements, checks a
``PAYMENT-SIGNATURE`` payload, holds the payment (a voucher is persisted in
the ledger before this returns), and after generation charges the actual usage
and signs the receipt that goes back in ``PAYMENT-RESPONSE``. A long stream also
gets running receipts (:meth:`PaymentAcceptor.progress`) for what it has sent so
far; a stream that breaks is charged its last one, never more.

The acceptor checks what every scheme shares (a payment at all, the scheme among the
node's, network, token, receiver, the amount against the worst case) and dispatches
the rest to the server half of the payment's scheme
(:mod:`agoranet.payments.schemes`: ``batch-settlement``'s vouchers and deposits,
``exact``'s EIP-3009 transfers, or any scheme registered there). It is those halves'
:class:`~agoranet.payments.schemes.base.ServerContext`: its chain calls run on the
state cache's executor with deadlines, and a chain that fails is a prompt 402.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from web3.exceptions import Web3Exception
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse

from agoranet.errors import ChainError, PaymentRequiredError
from agoranet.market import TokenPrices
from agoranet.payments import payload_shapes, x402wire
from agoranet.payments.accept.ledger import MAX_AMOUNT, Ledger
from agoranet.payments.accept.ledger_writer import LedgerWriter
from agoranet.payments.accept.verifier import StateCache
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.payments.schemes.base import Authorization, PaymentTerms, SchemeServer
from agoranet.payments.schemes.batch_settlement import BatchSettlementServer, ChainSettler
from agoranet.payments.schemes.exact import SCHEME_EXACT, ExactServer

__all__ = ["SCHEME_EXACT", "Authorization", "ChainSettler", "PaymentAcceptor", "PaymentTerms"]

_T = TypeVar("_T")
logger = logging.getLogger(__name__)


class PaymentAcceptor:
    """Accepts and charges x402 payments for a node, through its schemes' server halves.

    ``schemes``: the server halves the node takes (see
    :func:`~agoranet.payments.schemes.scheme_server`). Without it, the two built-in ones
    are wired from the SDK facilitators' functions given: ``deposits``/``deposit_verify``
    (``batch-settlement`` deposits with a payment) and ``exact``/``exact_verify`` (the
    ``exact`` scheme, offered only with both).
    """

    def __init__(self, terms: PaymentTerms, ledger: Ledger, cache: StateCache,
                 signer: ReceiptSigner, *, deposits: ChainSettler | None = None,
                 deposit_verify: Callable[[PaymentPayload, PaymentRequirements], Any] | None
                 = None, exact: ChainSettler | None = None,
                 exact_verify: Callable[[PaymentPayload, PaymentRequirements], Any] | None
                 = None, schemes: Iterable[SchemeServer] | None = None) -> None:
        self.terms = terms
        self.ledger = ledger
        self.writer = LedgerWriter(ledger)  # its writes off the event loop, group-committed
        self.cache = cache
        self.signer = signer
        if schemes is None:
            schemes = (BatchSettlementServer(deposits, deposit_verify),
                       ExactServer(exact, exact_verify))
        self._schemes: dict[str, SchemeServer] = {s.name: s for s in schemes}
        self.chain_lock = asyncio.Lock()

    def scheme(self, name: str) -> SchemeServer | None:
        """The server half this node takes ``name`` payments with (listed in its terms),
        or None."""
        return self._schemes.get(name) if name in self.terms.schemes else None

    # ------------------------------------------------------------ 402

    def payment_required(self, amount: int, prices: TokenPrices | None, *,
                         error: str | None = None, corrective: dict[str, Any] | None = None,
                         resource: str | None = None) -> PaymentRequired:
        accepts = []
        for name in self.terms.schemes:
            scheme = self.scheme(name)
            if scheme is None or not scheme.offered:
                continue
            accepts.append(scheme.requirement(self, amount, prices, corrective))
        info = {"url": resource} if resource else None
        return PaymentRequired.model_validate(
            {"x402Version": 2, "error": error, "resource": info,
             "accepts": [a.model_dump(by_alias=True) for a in accepts]})

    # ------------------------------------------------------------ accept

    async def authorize(self, header: str | PaymentPayload | None, worst: int,
                        request_id: str) -> Authorization:
        """Check the payment in ``header`` (its value, or the payment decoded from it) for a
        request costing at most ``worst``."""
        payment, scheme, max_amount = self._checked(header, worst)
        return await scheme.authorize(self, payment, max_amount, worst, request_id)

    async def authorize_ahead(self, header: str, request_id: str) -> Authorization | None:
        """:meth:`authorize` before the request's worst case is known, so that holding
        the payment (a voucher reaching the disk) overlaps the work of pricing the
        request (tokenising it). The authorization pays for no work until :meth:`require`
        has checked it against the worst case. None, with nothing done, if its scheme
        does not hold a payment ahead (one that moves money on chain to be accepted, a
        deposit): authorize it once the worst case is known."""
        payment, scheme, max_amount = self._checked(header, None)
        if not scheme.holds_ahead(payment):
            return None
        return await scheme.authorize(self, payment, max_amount, max_amount, request_id)

    async def require(self, auth: Authorization, worst: int) -> None:
        """Unless ``auth`` (from :meth:`authorize_ahead`) authorizes ``worst``: the payment
        is retracted (:meth:`retract`) and PaymentRequiredError raised, as
        :meth:`authorize` refuses it."""
        if auth.max_amount < worst:
            await self.writer.unsynced(lambda: self.retract(auth))
            raise _insufficient(auth.max_amount, worst)

    def _checked(self, header: str | PaymentPayload | None, worst: int | None
                 ) -> tuple[PaymentPayload, SchemeServer, int]:
        """The payment in ``header`` with what every scheme shares checked (and its amount
        against ``worst``, if known): its payload, its scheme's half, what it authorizes."""
        if not header:
            raise PaymentRequiredError(
                f"this request costs up to {worst} base units: pay with x402 "
                f"({x402wire.PAYMENT_SIGNATURE} header)", reason="payment_required")
        payment = header if isinstance(header, PaymentPayload) else \
            x402wire.decode_payment_payload(header)
        accepted = payment.accepted
        scheme = self.scheme(accepted.scheme)
        if scheme is None:
            raise PaymentRequiredError(f"scheme {accepted.scheme!r} is not accepted here",
                                       reason="unsupported_scheme")
        if accepted.network != self.terms.network:
            raise PaymentRequiredError(
                f"payment is for network {accepted.network}, this node is on "
                f"{self.terms.network}", reason=bs_errors.ERR_NETWORK_MISMATCH)
        if accepted.asset.lower() != self.terms.asset.lower():
            raise PaymentRequiredError(f"payment is in token {accepted.asset}, this node takes "
                                       f"{self.terms.asset}", reason=bs_errors.ERR_TOKEN_MISMATCH)
        if accepted.pay_to.lower() != self.terms.pay_to.lower():
            raise PaymentRequiredError(f"payment is to {accepted.pay_to}, not to this node "
                                       f"({self.terms.pay_to})",
                                       reason=bs_errors.ERR_RECEIVER_MISMATCH)
        try:  # the ledger keeps amounts as SQLite integers: at most MAX_AMOUNT
            max_amount = payload_shapes.uint(accepted.amount, "accepted.amount", 63)
        except ValueError as exc:
            raise PaymentRequiredError(f"{exc} (at most {MAX_AMOUNT})",
                                       reason="invalid_payload") from None
        if worst is not None and max_amount < worst:
            raise _insufficient(max_amount, worst)
        if not scheme.offered:
            raise PaymentRequiredError(f"this node does not take {scheme.name} payments",
                                       reason="unsupported_scheme")
        return payment, scheme, max_amount

    async def settle(self, auth: Authorization) -> SettleResponse | None:
        """Move the payment's money on chain now if its scheme does that per payment
        (``exact``; before or after the answer), else None (settled later in batches)."""
        return await self._scheme_of(auth).settle(self, auth)

    async def settle_exact(self, auth: Authorization) -> SettleResponse:
        """Move the money of an ``exact`` payment on chain (before or after the answer)."""
        settled = await self.settle(auth)
        assert settled is not None
        return settled

    # ------------------------------------------------------------ the chain, for the schemes

    async def on_chain(self, fn: Callable[[PaymentPayload, PaymentRequirements], _T],
                       payment: PaymentPayload, requirements: PaymentRequirements, *,
                       what: str, deadline: float | None = -1.0) -> _T:
        """``fn`` on the cache's chain executor (a few dedicated threads, a deadline unless
        ``deadline`` is None: a transaction, once sent, is waited for); a chain that does
        not answer is a prompt 402, before any money moved if it was a deadline or
        the pool being full (a transaction is only abandoned by its own HTTP timeouts)."""
        try:
            return await self.cache.executor.call(functools.partial(fn, payment, requirements),
                                                  what=what, deadline=deadline)
        except ChainError as exc:
            raise PaymentRequiredError(f"{exc}", reason="chain_unavailable") from exc
        except (OSError, Web3Exception) as exc:  # the SDK's own RPC call timed out or failed
            raise PaymentRequiredError(f"{what}: the chain RPC failed: {_short(exc)}",
                                       reason="chain_unavailable") from exc

    async def verify(self, fn: Callable[[PaymentPayload, PaymentRequirements], _T],
                     payment: PaymentPayload, requirements: PaymentRequirements, *,
                     what: str, reason: str) -> _T:
        """An SDK facilitator's ``verify`` on the chain executor. It assumes a well-formed
        payload: what it raises on a malformed one is the payer's error, a 402."""
        try:
            return await self.on_chain(fn, payment, requirements, what=what)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            logger.info("%s: malformed payload (%s: %s)", what, type(exc).__name__, exc)
            raise PaymentRequiredError(f"malformed payment payload ({what}): "
                                       f"{type(exc).__name__}: {exc}"[:300],
                                       reason=reason) from None

    # ------------------------------------------------------------ charge

    def charge(self, auth: Authorization, tokens_in: int, tokens_out: int,
               amount: int, *, quoted: Receipt | None = None) -> tuple[Receipt, SettleResponse]:
        """Charge actual usage (never above the authorization) and sign the receipt; with
        ``quoted`` (from :meth:`quote`, already sent), charge exactly that receipt. A charge
        that fails leaves the payment to :meth:`release` (the hold is not left holding)."""
        charged = self._scheme_of(auth).charge(self, auth, tokens_in, tokens_out, amount,
                                               quoted)
        auth.done = True
        return charged

    def quote(self, auth: Authorization, tokens_in: int, tokens_out: int,
              amount: int) -> tuple[Receipt, SettleResponse] | None:
        """The final receipt and payment response :meth:`charge` gives for this usage, signed
        but not charged (None for a fixed amount, ``exact``): a stream's final receipt goes
        out first and is charged (``charge(..., quoted=)``) once it is sent, so a stream
        cut before it is charged its last running receipt instead."""
        return self._scheme_of(auth).quote(self, auth, tokens_in, tokens_out, amount)

    def quote_before_charge(self, auth: Authorization, tokens_in: int, tokens_out: int,
                            amount: int) -> tuple[Receipt, SettleResponse] | None:
        """:meth:`quote` for an answer that is sent whole before its charge is written,
        where the ledger writes before the event loop reads anything more (a local file);
        None where it does not (a database off the loop: the buyer could pay its next
        request on the channel while it is still held), or for a fixed amount: charge now."""
        if not self.writer.inline:
            return None
        return self.quote(auth, tokens_in, tokens_out, amount)

    def progress(self, auth: Authorization, tokens_in: int, tokens_out: int,
                 amount: int) -> dict[str, Any] | None:
        """A running receipt for the part of a stream already sent (None for a scheme
        without them, ``exact``, which moves a fixed amount): persisted, then signed
        and returned as a payment response for the stream."""
        return self._scheme_of(auth).progress(self, auth, tokens_in, tokens_out, amount)

    def release(self, auth: Authorization) -> Receipt | None:
        """The request failed or was abandoned before it finished: charged what its last
        running receipt says (returned), or nothing if none was sent."""
        if auth.done:
            return None
        auth.done = True
        return self._scheme_of(auth).release(self, auth)

    def retract(self, auth: Authorization) -> None:
        """A payment taken for a request refused before it was served (the request's own
        fault, or its client gone): as if it had never been offered, a voucher it holds
        leaves the ledger (:meth:`~agoranet.payments.accept.ledger.Ledger.retract`)."""
        if auth.done:
            return
        auth.done = True
        if auth.hold is not None:
            self.ledger.retract(auth.hold)

    def _scheme_of(self, auth: Authorization) -> SchemeServer:
        """The half that accepted ``auth`` (the acceptor made it, so it has one)."""
        return self._schemes[auth.scheme]


def _insufficient(max_amount: int, worst: int) -> PaymentRequiredError:
    return PaymentRequiredError(f"payment authorizes {max_amount} base units but this request "
                                f"may cost {worst}", reason="insufficient_amount")


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]
