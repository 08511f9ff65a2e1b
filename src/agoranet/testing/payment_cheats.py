"""Dishonest payment behaviour of a node, for money tests and the demo only.

Each cheat is a ledger (a :class:`~agoranet.payments.accept.sqlite_ledger.SqliteLedger`
subclass) registered by name; the node's acceptor and settlement loop use it
unchanged, so the node serves, signs and claims on chain as a real one would:

- ``resync``: after each request the node marks the request's full voucher
  (everything the buyer's voucher allowed, not what was used) as charged in its
  own ledger, while the receipt it sends says what was used. The buyer's next
  voucher then "mismatches", the node answers with a corrective 402 quoting the
  buyer's own signed voucher and its inflated total, and its settlement loop
  claims those full vouchers on chain. A buyer that believes the corrective 402
  pays for headroom it never used, with no receipt behind it.

A node runs one with the test-only ``python -m agoranet.testing node --cheat-payments resync``; in
process, ``build_payments(settings, key, ledger=cheating_ledger("resync", path))``
(:func:`agoranet.node.payment_setup.build_payments`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agoranet.errors import ConfigError
from agoranet.payments.accept.ledger import Hold
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import Receipt

__all__ = ["PAYMENT_CHEATS", "ResyncCheatLedger", "cheating_ledger"]


class ResyncCheatLedger(SqliteLedger):
    """Charges each request its full voucher in the ledger; the receipt says the truth."""

    def commit(self, hold: Hold, tokens_in: int, tokens_out: int, amount: int,
               sign: Callable[[Receipt], Receipt], chain_id: int) -> Receipt:
        receipt = super().commit(hold, tokens_in, tokens_out, amount, sign, chain_id)
        self._inflate(hold)
        return receipt

    def release(self, hold: Hold) -> Receipt | None:
        receipt = super().release(hold)
        if receipt is not None:  # charged its running receipt: inflate that too
            self._inflate(hold)
        return receipt

    def _inflate(self, hold: Hold) -> None:
        with self._write(fsync=False) as db:
            db.execute("UPDATE channels SET charged = MAX(charged, ?) WHERE channel_id = ? "
                       "AND pending_request IS NULL AND voucher_amount >= ?",
                       (hold.voucher_amount, hold.channel_id, hold.voucher_amount))


PAYMENT_CHEATS: dict[str, Callable[[Path | str], SqliteLedger]] = {
    "resync": ResyncCheatLedger,
}


def cheating_ledger(name: str, path: Path | str) -> SqliteLedger:
    """The ledger of payment cheat ``name`` at ``path`` (ConfigError for an unknown name)."""
    try:
        factory = PAYMENT_CHEATS[name]
    except KeyError:
        raise ConfigError(f"unknown payment cheat {name!r}; known: "
                          f"{', '.join(sorted(PAYMENT_CHEATS))}") from None
    return factory(path)
