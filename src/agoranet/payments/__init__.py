"""Payments: x402 money between a buyer and a seller, in two sides and what they share.

- ``accept/``: the side that takes money (a node, a tool seller): voucher checks
  (``verifier``), the acceptor that dispatches to the schemes, the ledgers that hold,
  charge and release vouchers (SQLite, PostgreSQL, group commit through
  ``ledger_writer``) and on-chain settlement of the claims.
- ``pay/``: the side that pays (a gateway, an agent): the ``payer`` that signs vouchers and
  checks receipts, its store, the httpx auth flow, budgeted sub-keys, paid uploads, and
  the cancel of an unanswered ``exact`` transfer.
- ``schemes/``: x402 schemes as plug-ins (batch-settlement, exact), each with a server
  half (used by ``accept``) and a client half (used by ``pay``).
- Shared: ``amounts``, ``ecdsa``, ``receipts``, ``vouchers`` (a voucher's EIP-712 digest),
  ``x402wire`` and ``payload_shapes`` (the wire), ``channels`` (the escrow's channels on
  chain) and ``wallet`` (the keystore).

The two sides never import each other (``tests/test_layers.py``). Import the modules
directly; this package imports nothing on its own.
"""

from __future__ import annotations

__all__: list[str] = []
