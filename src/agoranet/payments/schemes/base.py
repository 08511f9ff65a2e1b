"""The two halves of an x402 payment scheme, and the small types they share.

A scheme (``batch-settlement``, ``exact``, ...) is one module of
:mod:`agoranet.payments.schemes` that registers a :class:`Scheme`: its name, the
factory of its **server half** (:class:`SchemeServer`: what a node or a tool server
does with a payment in that scheme) and of its **client half**
(:class:`SchemeClient`: what a buyer does to pay in it).

The server half does the scheme's own work for a
:class:`~agoranet.payments.accept.acceptor.PaymentAcceptor`, which checks what every scheme
shares first (a payment header, the network, token and receiver, the amount against the
request's worst case) and then dispatches by the payment's scheme name. The acceptor
is the half's :class:`ServerContext`: the node's terms, ledger, chain-state cache,
receipt signer, and its chain calls (on a few dedicated threads, with deadlines,
serialised by one lock where money moves).

:class:`PaymentTerms` (what a node accepts) and :class:`Authorization` (a payment
accepted for one request) live here so that both the acceptor and the schemes use them
without importing each other; :mod:`agoranet.payments.accept.acceptor` re-exports them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse

from agoranet.market import TokenPrices
from agoranet.payments.schemes import registry

if TYPE_CHECKING:
    from agoranet.payments.accept.ledger import Hold, Ledger
    from agoranet.payments.accept.ledger_writer import LedgerWriter
    from agoranet.payments.accept.verifier import OnchainState, StateCache
    from agoranet.payments.receipts import Receipt, ReceiptSigner

__all__ = ["Authorization", "ChainAccess", "ClientPayment", "Paid", "PaymentTerms", "Scheme",
           "SchemeClient", "SchemeServer", "ServerContext"]

_T = TypeVar("_T")

# (payment, requirements) -> an SDK facilitator's answer (verify or settle); chain I/O.
ChainCall = Callable[[PaymentPayload, PaymentRequirements], _T]


@dataclass(frozen=True)
class PaymentTerms:
    """What a node accepts: chain, token, receiver, channel parameters, schemes by name."""

    chain_id: int
    asset: str
    pay_to: str
    receiver_authorizer: str
    token_name: str
    token_version: str
    withdraw_delay: int = 900
    min_deposit: int = 0
    max_timeout_seconds: int = 3600
    schemes: tuple[str, ...] = ("batch-settlement", "exact")

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"

    def requirement(self, scheme: str, amount: int, prices: TokenPrices | None = None,
                    extra: dict[str, Any] | None = None) -> PaymentRequirements:
        """The x402 requirements for paying ``amount`` in ``scheme``: the token's EIP-712
        name and version, what the registered scheme adds (none for an unknown one), the
        prices, then ``extra``."""
        more: dict[str, Any] = {"name": self.token_name, "version": self.token_version}
        found = registry.find(scheme)
        if found is not None:
            more.update(found.requirement_extra(self, amount))
        if prices is not None:
            more["prices"] = {"inputPerMillion": str(prices.input_per_million),
                              "outputPerMillion": str(prices.output_per_million)}
        more.update(extra or {})
        return PaymentRequirements(scheme=scheme, network=self.network, asset=self.asset,
                                   amount=str(amount), pay_to=self.pay_to,
                                   max_timeout_seconds=self.max_timeout_seconds, extra=more)


@dataclass
class Authorization:
    """A payment accepted for one request, until it is charged or released."""

    scheme: str
    request_id: str
    payer: str
    max_amount: int
    requirements: PaymentRequirements
    hold: Hold | None = None
    state: OnchainState | None = None
    settle: SettleResponse | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    # The address whose signature the payment carries, checked: the channel's payer
    # authorizer (``batch-settlement``) or the transfer's signer (``exact``).
    signer: str = ""


@dataclass(frozen=True)
class ChainAccess:
    """How a server half moves money on chain as the node: the x402 SDK's facilitator
    signer (a ``FacilitatorEvmSigner``, sending transactions from the node's account) and
    the node's private key (hex), for a scheme that also signs as the receiver's
    authorizer."""

    tx_signer: Any
    key: str


class ServerContext(Protocol):
    """What a server half may use of the acceptor that dispatches to it."""

    terms: PaymentTerms
    ledger: Ledger
    writer: LedgerWriter  # the ledger's writes, off the event loop (accepting a voucher)
    cache: StateCache
    signer: ReceiptSigner
    chain_lock: asyncio.Lock  # held around verify + settle where money moves

    def on_chain(self, fn: ChainCall[_T], payment: PaymentPayload,
                 requirements: PaymentRequirements, *, what: str,
                 deadline: float | None = -1.0) -> Awaitable[_T]:
        """``fn`` on the chain executor; a chain that fails is a 402 (chain_unavailable)."""
        ...

    def verify(self, fn: ChainCall[_T], payment: PaymentPayload,
               requirements: PaymentRequirements, *, what: str,
               reason: str) -> Awaitable[_T]:
        """An SDK facilitator's ``verify``: as :meth:`on_chain`, and a payload it trips on
        is the payer's error, a 402 with ``reason``."""
        ...


class SchemeServer(Protocol):
    """The server half of a scheme, one instance per node (its chain settlers inside)."""

    @property
    def name(self) -> str:
        """The scheme's x402 name."""
        ...

    @property
    def offered(self) -> bool:
        """Whether this node takes payments in the scheme now (else it is left out of a
        402, and a payment in it is refused)."""
        ...

    def requirement(self, ctx: ServerContext, amount: int, prices: TokenPrices | None,
                    corrective: dict[str, Any] | None) -> PaymentRequirements:
        """The scheme's entry in a 402 for a request costing up to ``amount``;
        ``corrective`` is the state a refusal of this scheme's payment carries."""
        ...

    def holds_ahead(self, payment: PaymentPayload) -> bool:
        """Whether :meth:`authorize` may accept ``payment`` before the request's worst case
        is known (the node prices a request while its payment is held; one that ends up
        short is released): only if accepting it moves no money on chain."""
        ...

    async def authorize(self, ctx: ServerContext, payment: PaymentPayload, max_amount: int,
                        worst: int, request_id: str) -> Authorization:
        """Check and accept ``payment`` (its shared fields checked already) for a request
        costing at most ``worst`` (``max_amount``: what it authorizes, at least that; the
        same as ``max_amount`` when the payment is held ahead, :meth:`holds_ahead`);
        PaymentRequiredError if it is refused. Money the scheme holds is persisted before
        this returns."""
        ...

    async def settle(self, ctx: ServerContext, auth: Authorization) -> SettleResponse | None:
        """Move the payment's money on chain now, if the scheme does that per payment
        (``exact``); None for a scheme that settles later in batches. Idempotent."""
        ...

    def charge(self, ctx: ServerContext, auth: Authorization, tokens_in: int, tokens_out: int,
               amount: int, quoted: Receipt | None) -> tuple[Receipt, SettleResponse]:
        """Charge actual usage (never above the authorization), sign its receipt."""
        ...

    def quote(self, ctx: ServerContext, auth: Authorization, tokens_in: int, tokens_out: int,
              amount: int) -> tuple[Receipt, SettleResponse] | None:
        """The final receipt :meth:`charge` would give, signed, not charged; None for a
        scheme whose amount is fixed (charged at once instead)."""
        ...

    def progress(self, ctx: ServerContext, auth: Authorization, tokens_in: int,
                 tokens_out: int, amount: int) -> dict[str, Any] | None:
        """A running receipt (persisted, then signed) for the part already served; None
        for a scheme without running receipts."""
        ...

    def release(self, ctx: ServerContext, auth: Authorization) -> Receipt | None:
        """The request failed or was abandoned: what its last running receipt charged, or
        None."""
        ...


@dataclass(frozen=True)
class ClientPayment:
    """A payment a client half made for one request: the ``PAYMENT-SIGNATURE`` value and
    what it needs later to check the answer (``state``: the half's own)."""

    scheme: str
    request_id: str
    amount: int  # the most this payment lets the server take, in base units
    header: str
    state: Any = None


@dataclass(frozen=True)
class Paid:
    """A checked payment response: what it cost, its on-chain transaction if one moved
    money with it (else ""), and the server's signed receipt if it gave one."""

    amount: int
    transaction: str = ""
    receipt: Receipt | None = None


class SchemeClient(Protocol):
    """The client half of a scheme, for one buyer and one seller."""

    @property
    def name(self) -> str:
        """The scheme's x402 name."""
        ...

    def pay(self, requirement: PaymentRequirements, request_id: str | None = None
            ) -> ClientPayment:
        """Pay for one request under ``requirement`` (the 402's entry for this scheme)."""
        ...

    def check(self, payment: ClientPayment, response: dict[str, Any], *, model: str = "",
              max_tokens: int | None = None) -> Paid:
        """Check the server's decoded ``PAYMENT-RESPONSE`` for ``payment`` and believe it
        (ReceiptError if it does not hold up); ``model`` and ``max_tokens`` are what a
        metered scheme prices the receipt against."""
        ...

    def adopt(self, required: PaymentRequired) -> bool:
        """Follow a corrective 402 (its decoded ``PAYMENT-REQUIRED``) under the scheme's rule:
        True if the client's state now matches the server's and paying again may succeed;
        False if the 402 is none of this half's business. A charge nothing backs raises
        ChargeDisputeError (the client pays that server no more)."""
        ...


def _no_extra(terms: PaymentTerms, amount: int) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Scheme:
    """A payment scheme as registered: its x402 name, the factory of its server half
    (given the node's :class:`ChainAccess`, or None: no on-chain settlement), the factory
    of its client half (scheme-specific keyword options), and what it adds to the
    ``extra`` of its 402 entry."""

    name: str
    server: Callable[[ChainAccess | None], SchemeServer]
    client: Callable[..., SchemeClient]
    requirement_extra: Callable[[PaymentTerms, int], dict[str, Any]] = _no_extra
