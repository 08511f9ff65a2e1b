"""Payments: amounts, the wallet's keystore, escrow channels and budgeted sub-keys.

Import the modules directly (``agoranet.payments.wallet``, ``.channels``,
``.subkeys``, ``.amounts``); this package imports nothing on its own.
"""

from __future__ import annotations

__all__: list[str] = []
