"""x402 payment schemes as plug-ins, registered by name, each with a server and a client half.

Built in: ``batch-settlement`` (:mod:`.batch_settlement`: payment channels, vouchers,
running receipts, claims in batches) and ``exact`` (:mod:`.exact`: one EIP-3009 transfer
per payment). Importing this package registers both.

Server side: a :class:`~agoranet.payments.accept.acceptor.PaymentAcceptor` holds one server half
per scheme the node takes and dispatches each payment to the half registered under its
``accepted.scheme``; a name it holds no half of is a 402 (``unsupported_scheme``) whose
requirements list the schemes it does take. Build the halves by name::

    halves = [scheme_server(name, ChainAccess(tx_signer, key)) for name in terms.schemes]
    acceptor = PaymentAcceptor(terms, ledger, cache, signer, schemes=halves)

Client side: ``scheme_client("exact", account=buyer)`` or
``scheme_client("batch-settlement", payer=payer)``; then ``pay(requirement)`` for the
``PAYMENT-SIGNATURE`` header, ``check(payment, payment_response)`` for the answer, and
``adopt(payment_required)`` on a corrective 402.

Adding a scheme is one new module plus its tests:

1. Write the server half (:class:`SchemeServer`: ``requirement`` for its 402 entry,
   ``authorize``, ``settle``, ``charge``, ``quote``, ``progress``, ``release``; each gets
   the acceptor as its :class:`ServerContext`: terms, ledger, chain calls) and the
   client half (:class:`SchemeClient`: ``pay``, ``check``, ``adopt``).
2. At the end of the module: ``register_scheme(Scheme(NAME, server_factory,
   client_factory, requirement_extra))``; the server factory gets the node's
   :class:`ChainAccess` (or None).
3. Import the module below (a built-in) or before building the acceptor (a plug-in),
   and list its name in the node's :class:`PaymentTerms` ``schemes``.

``tests/payments/test_schemes_plugin.py`` does exactly this with a toy scheme.
"""

from __future__ import annotations

from agoranet.payments.schemes import batch_settlement, exact
from agoranet.payments.schemes.base import (
    Authorization,
    ChainAccess,
    ClientPayment,
    Paid,
    PaymentTerms,
    Scheme,
    SchemeClient,
    SchemeServer,
    ServerContext,
)
from agoranet.payments.schemes.batch_settlement import (
    SCHEME_BATCH_SETTLEMENT,
    BatchSettlementClient,
    BatchSettlementServer,
)
from agoranet.payments.schemes.exact import SCHEME_EXACT, ExactClient, ExactServer
from agoranet.payments.schemes.registry import (
    available_schemes,
    find,
    get_scheme,
    register_scheme,
    scheme_client,
    scheme_server,
    unregister_scheme,
)

__all__ = ["SCHEME_BATCH_SETTLEMENT", "SCHEME_EXACT", "Authorization", "BatchSettlementClient",
           "BatchSettlementServer", "ChainAccess", "ClientPayment", "ExactClient", "ExactServer",
           "Paid", "PaymentTerms", "Scheme", "SchemeClient", "SchemeServer", "ServerContext",
           "available_schemes", "batch_settlement", "exact", "find", "get_scheme",
           "register_scheme", "scheme_client", "scheme_server", "unregister_scheme"]
