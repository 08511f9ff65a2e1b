"""``agoranet node claim``: claim and settle a node's unclaimed earnings now.

A running node claims by itself when a threshold is reached; this claims at once,
whatever the thresholds, from a node's ledger while the node is stopped (the
ledger's lock keeps the two from claiming the same vouchers at once).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from agoranet.cli.wallet_common import keystore_option, rpc_option, unlock_wallet
from agoranet.config import NodeSettings

__all__ = ["claim"]

console = Console(highlight=False, soft_wrap=True)


@click.command("claim")
@click.option("--ledger", "ledger", metavar="PATH|URL", default=None,
              help="The node's ledger: a SQLite file [default: ~/.agoranet/node/ledger.sqlite] "
              "or a PostgreSQL URL.")
@keystore_option
@rpc_option
@click.pass_context
def claim(ctx: click.Context, ledger: str | None, keystore: Path | None, rpc_url: str) -> None:
    """Claim every unclaimed voucher in the node's ledger now, and settle to the node."""
    from agoranet.cli.node_banner import CLAIM_GAS, no_gas_warning
    from agoranet.cli.preflight import connect_chain_or_hint, gas_cost, hold_ledger, native_balance
    from agoranet.errors import ConfigError
    from agoranet.node.payment_setup import build_payments, ledger_path
    from agoranet.payments.accept.ledger_url import is_postgres_url, redact_url
    from agoranet.payments.amounts import format_amount

    where = str(ledger or (ctx.obj or {}).get("ledger") or ledger_path(NodeSettings()))
    lock = None
    if is_postgres_url(where):  # replicas share it: the claim lock, not a file lock
        settings = NodeSettings(rpc_url=rpc_url, keystore=keystore, ledger_url=where)
        path: Path | str = redact_url(where)
    else:
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"no ledger at {path}: has this node been paid yet?")
        lock = hold_ledger(path)
        settings = NodeSettings(rpc_url=rpc_url, keystore=keystore, ledger_path=path)
    try:
        account = unlock_wallet(keystore)
        w3 = connect_chain_or_hint(rpc_url)
        balance = native_balance(w3, account.address)
        if balance < gas_cost(w3, CLAIM_GAS):
            raise ConfigError(no_gas_warning(account.address, balance).removeprefix("warning: "))
        payments = build_payments(settings, account, ledger=None)
        try:
            claims_here = getattr(payments.ledger, "is_claimer", None)  # PostgreSQL only
            if claims_here is not None and not claims_here():
                raise ConfigError(f"a running replica of this node claims from {path} (it "
                                  "holds the ledger's claim lock): it claims by itself")
            outcome = payments.settler.tick(force=True)
        finally:
            payments.close()
    finally:
        if lock is not None:
            lock.release()
    if outcome is None:
        console.print(f"nothing to claim in {path}")
        return
    claimed = sum(outcome.claimed.values())
    console.print(f"claimed {format_amount(claimed)} on {len(outcome.claimed)} channel(s)")
    if outcome.claim_tx:
        console.print(f"  claim tx  {outcome.claim_tx}")
    console.print(f"settled {format_amount(outcome.settled)} to {account.address}")
    if outcome.settle_tx:
        console.print(f"  settle tx {outcome.settle_tx}")
    for channel in outcome.failed:
        console.print(f"claim failed on channel {channel}: retried later (see `agoranet node "
                      "earnings`)")
    if outcome.settle_error:
        console.print(f"settle failed: {outcome.settle_error} (retried by the node)")
