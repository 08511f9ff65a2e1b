"""The side that accepts money (a node, a tool seller): checking vouchers, the ledger
that holds and charges them (SQLite or PostgreSQL, with group commit), and settling
the claims on chain. Import the modules directly; this package imports nothing."""

from __future__ import annotations

__all__: list[str] = []
