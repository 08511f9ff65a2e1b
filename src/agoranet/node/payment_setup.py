"""Assemble a paid node's payment parts from its settings and key.

Connects to the chain, opens the ledger (releasing holds a killed process left),
and builds the :class:`~agoranet.payments.accept.acceptor.PaymentAcceptor` (with the server
half of each scheme its terms name, from :mod:`agoranet.payments.schemes`), the
:class:`~agoranet.payments.accept.settlement.Settler` and the signed offer terms, with
the x402 SDK's facilitators doing the on-chain work under the node's own key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD
from x402.mechanisms.evm.signers import FacilitatorWeb3Signer

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.executor import ChainExecutor
from agoranet.chain.rpc import connect, http_provider
from agoranet.config import ChainSettings, NodeSettings, default_home
from agoranet.errors import ConfigError
from agoranet.payments.accept.acceptor import PaymentAcceptor, PaymentTerms
from agoranet.payments.accept.ledger import Ledger
from agoranet.payments.accept.settlement import ClaimPolicy, Settler
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger
from agoranet.payments.accept.verifier import StateCache, Web3StateReader
from agoranet.payments.receipts import ReceiptSigner
from agoranet.payments.schemes import (
    SCHEME_BATCH_SETTLEMENT,
    BatchSettlementServer,
    ChainAccess,
    scheme_server,
)

__all__ = ["NodePayments", "build_payments", "ledger_path", "open_ledger"]


def ledger_path(settings: NodeSettings) -> Path:
    return settings.ledger_path or default_home() / "node" / "ledger.sqlite"


def open_ledger(settings: NodeSettings) -> Ledger:
    """The node's ledger: PostgreSQL at ``ledger_url`` if set, else the SQLite file.

    ConfigError if PostgreSQL is asked for without psycopg installed; LedgerError if the
    server cannot be reached (both before the model loads: the CLI opens it first).
    """
    if settings.ledger_url is None:
        return SqliteGroupLedger(ledger_path(settings))  # group commit: LedgerWriter
    try:
        from agoranet.payments.accept.pg_group import PgGroupLedger  # psycopg: the `postgres` extra
    except ImportError as exc:
        raise ConfigError(f"a PostgreSQL ledger needs psycopg ({exc}): pip install "
                          "'agoranet[postgres]'") from exc
    return PgGroupLedger(settings.ledger_url, lease_s=settings.ledger_lease_s)


@dataclass
class NodePayments:
    acceptor: PaymentAcceptor
    settler: Settler
    ledger: Ledger
    account: LocalAccount
    settle_interval: float
    settle_exact_before: bool

    def close(self) -> None:
        self.acceptor.writer.close()  # its queued writes first
        self.ledger.close()
        self.acceptor.cache.executor.close()


def build_payments(settings: NodeSettings, account: LocalAccount, *,
                   ledger: Ledger | None = None,
                   schemes: tuple[str, ...] | None = None) -> NodePayments:
    """The node's payment parts; ``ledger`` replaces the one at the settings' path (tests
    and demos: a cheating ledger from :mod:`agoranet.testing.payment_cheats`); ``schemes``
    the ones it takes (default: every built-in; a tool server may take ``exact`` only)."""
    # Request-path chain calls: one short try each (no web3 retries), on a few
    # dedicated threads, so a frozen RPC costs a request seconds, not a minute.
    w3 = connect(settings.rpc_url, timeout=settings.chain_timeout_s, retry=False)
    chain_id = int(w3.eth.chain_id)
    addresses = resolve_addresses(chain_id, ChainSettings(rpc_url=settings.rpc_url))
    key = "0x" + bytes(account.key).hex()
    terms = PaymentTerms(
        chain_id=chain_id,
        asset=addresses.require_stablecoin(),
        pay_to=account.address,
        receiver_authorizer=account.address,
        token_name=addresses.token_name or "USD Coin",
        token_version=addresses.token_version or "2",
        withdraw_delay=settings.withdraw_delay,
        min_deposit=settings.min_deposit,
    )
    if schemes:
        terms = dataclasses.replace(terms, schemes=schemes)
    ledger = ledger or open_ledger(settings)
    ledger.recover()
    reader = Web3StateReader(w3, addresses)
    executor = ChainExecutor(workers=settings.chain_workers, timeout=settings.chain_timeout_s)
    # Stale-while-error is safe while the payer's withdrawal cannot complete meanwhile:
    # capped at a third of the withdraw delay (see StateCache).
    cache = StateCache(reader, settings.chain_state_ttl, executor=executor,
                       max_stale=min(settings.chain_stale_max_s, settings.withdraw_delay / 3))
    tx_signer = FacilitatorWeb3Signer(key, settings.rpc_url)
    # The SDK's signer makes its own provider (30 s, 5 retries): bound it the same way.
    tx_signer._w3.provider = http_provider(settings.rpc_url, timeout=settings.chain_timeout_s,
                                           retry=False)
    # Each scheme the terms name, built by name from the registry, settling as this node.
    chain = ChainAccess(tx_signer, key)
    halves = [scheme_server(name, chain) for name in terms.schemes]
    acceptor = PaymentAcceptor(terms, ledger, cache, ReceiptSigner(key), schemes=halves)
    # The settlement loop claims channels through batch-settlement's facilitator; a node
    # that takes no batch-settlement has none to claim (its loop finds nothing).
    batch = (acceptor.scheme(SCHEME_BATCH_SETTLEMENT)
             if SCHEME_BATCH_SETTLEMENT in terms.schemes
             else scheme_server(SCHEME_BATCH_SETTLEMENT, chain))
    if not isinstance(batch, BatchSettlementServer) or batch.deposits is None:
        raise ConfigError("a paid node takes batch-settlement: the settlement loop claims "
                          "its channels (through the facilitator that settles deposits)")

    def gas_of(tx_hash: str) -> int:
        if not tx_hash:
            return 0
        receipt: Any = w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        return int(receipt["gasUsed"])

    escrow = reader.escrow

    def settled_of(tx_hash: str) -> int:
        """The amount in the escrow's ``Settled`` event of ``tx_hash``."""
        receipt: Any = w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        events = escrow.events.Settled().process_receipt(receipt, errors=DISCARD)
        return sum(int(e["args"]["amount"]) for e in events)

    settler = Settler(
        ledger, batch.deposits, terms.requirement(SCHEME_BATCH_SETTLEMENT, 0), reader,
        ClaimPolicy(settings.claim_min_amount, settings.claim_max_requests,
                    settings.claim_max_age),
        on_state=cache.put, gas_of=gas_of, settled_of=settled_of,
    )
    return NodePayments(acceptor, settler, ledger, account, settings.settle_interval,
                        settings.settle_exact_before)
