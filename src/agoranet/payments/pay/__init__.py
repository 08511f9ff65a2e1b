"""The side that pays (a gateway, a buyer's agent): the payer that signs vouchers and
checks receipts, its store, the httpx auth flow that pays a node per request,
budgeted sub-keys and paid adapter uploads. Import the modules directly; this package
imports nothing."""

from __future__ import annotations

__all__: list[str] = []
