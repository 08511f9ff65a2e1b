"""``agoranet verify``: audit a node against reference weights.

A paid node is paid for the challenges from a wallet (``--rpc-url``, ``--keystore``)
over a channel of the verifier's own, within ``--budget`` (see
:mod:`agoranet.verify.audit_payment`).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

__all__ = ["verify"]

if TYPE_CHECKING:
    from agoranet.payments.pay.payer import Payer
    from agoranet.verify.commitment_audit import CommitmentResult

console = Console()


@click.command()
@click.option("--node", "node_url", required=True, help="The node's URL (…/v1).")
@click.option("--reference", required=True,
              help="Reference weights: a model directory or Hub id you trust.")
@click.option("--model", default=None, help="Model name at the node [default: the reference's].")
@click.option("--rounds", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Rounds of 30 fresh challenges (random prompts and seeds).")
@click.option("--commitments/--no-commitments", default=None,
              help="Also ask for and check TOPLOC-style commitments "
              "[default: when the node's offer has them].")
@click.option("--rpc-url", default=None,
              help="Pay a paid node on this chain, from the wallet of --keystore.")
@click.option("--keystore", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The wallet that pays [default: ~/.agoranet/wallet/keystore.json].")
@click.option("--budget", type=click.IntRange(min=1), default=None,
              help="The most the audit may pay the node, in base units (needed with "
              "--rpc-url); the audit stops early rather than go over it.")
@click.option("--deposit", type=click.IntRange(min=1), default=None,
              help="Deposit of a new channel to the node [default: the budget].")
@click.option("--gateway", "gateway_url", default=None,
              help="Ask the challenges through this gateway (…/v1), pinned to the node: the "
              "gateway pays, within the budget of --key.")
@click.option("--key", default=None, envvar="AGORANET_KEY",
              help="The gateway key that pays (env AGORANET_KEY); give it a budget of its "
              "own, the audit's: `agoranet keys create audit --budget 0.01`.")
@click.option("--channels", "channels_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where the verifier keeps its channels and receipts "
              "[default: ~/.agoranet/verify/channels].")
def verify(node_url: str, reference: str, model: str | None, rounds: int,
           commitments: bool | None, rpc_url: str | None, keystore: Path | None,
           budget: int | None, deposit: int | None, gateway_url: str | None, key: str | None,
           channels_dir: Path | None) -> None:
    """Check that a node serves the weights it claims (exit 3 if it does not)."""
    from agoranet.engines.hf import load_model
    from agoranet.verify.audit_payment import AuditPayment
    from agoranet.verify.node_audit import GatewayRoute, audit_node

    if gateway_url is not None and rpc_url is not None:
        raise click.UsageError("pay either with a wallet (--rpc-url) or through a gateway "
                               "(--gateway), not both")
    if gateway_url is not None and not key:
        raise click.UsageError("auditing through a gateway needs its --key (or AGORANET_KEY)")
    if gateway_url is not None and commitments:
        raise click.UsageError("commitments cannot be checked through a gateway yet: audit "
                               "the node directly with --rpc-url for them")
    route = GatewayRoute(gateway_url, key) if gateway_url is not None and key else None
    if rpc_url is not None and budget is None:
        raise click.UsageError("paying a node (--rpc-url) needs an audit --budget")
    payer = None
    if rpc_url is not None:
        assert budget is not None
        payer = _payer(node_url, rpc_url, keystore, deposit or budget, channels_dir)
    try:
        with console.status(f"loading the reference {reference}"):
            loaded = load_model(reference)
        name = model or loaded.info.name
        payment = AuditPayment.over(payer, budget) if payer is not None and budget else None
        with console.status(f"auditing {node_url}"):
            audit = audit_node(node_url, name, loaded, rounds=rounds, commitments=commitments,
                               payment=payment, gateway=route)
    finally:
        if payer is not None:
            payer.close()
    if not audit.results and audit.stopped:
        more = "give the key more budget" if route is not None else "raise --budget"
        raise click.ClickException(f"no challenge was asked: {audit.stopped}; {more}")
    table = Table(title=f"audit of {node_url} ({name})")
    for column in ("answers", "tokens", "judged steps", "mismatches", "max logprob drift",
                   "flagged answers", "verdict"):
        table.add_column(column, justify="right")
    table.add_row(str(len(audit.results)), str(audit.tokens),
                  str(sum(r.counted for r in audit.results)),
                  str(sum(r.mismatches for r in audit.results)),
                  f"{max((r.mean_logprob_error for r in audit.results), default=0):.4f}",
                  str(audit.flagged), "pass" if audit.passed else "[bold red]FAIL[/]")
    console.print(table)
    if not audit.seeded:
        console.print("greedy challenges only: the node's offer states no sampler this "
                      "auditor can replay, so seeded answers cannot be checked")
    if payer is not None:
        console.print(f"paid the node {audit.spent} base units of the {budget} budget "
                      f"(channel {payer.state.channel_id if payer.state else '-'})")
    if route is not None:
        console.print(f"the gateway charged the key {audit.spent} base units for the "
                      "challenges")
    if audit.stopped:
        console.print(f"[yellow]stopped early: {audit.stopped}[/]")
    _print_commitments(audit.commitment_results, asked=commitments)
    if not audit.passed:
        sys.exit(3)


def _print_commitments(results: list[CommitmentResult], asked: bool | None) -> None:
    if not results:
        if asked is None:
            console.print("commitments: not offered by the node")
        return
    chunks = [c for r in results for c in r.checks]
    console.print(
        f"commitments: {sum(r.passed for r in results)} of {len(results)} answers pass, "
        f"{sum(not c.passed for c in chunks)} of {len(chunks)} chunks fail; worst chunk: "
        f"{max((c.exponent_mismatches for c in chunks), default=0)} sign/exponent mismatches, "
        f"mantissa mean {max((c.mantissa_mean for c in chunks), default=0.0):.2f}")
    for reason in sorted({r.reason for r in results if r.reason is not None}):
        console.print(f"  [red]{reason}[/]")


def _payer(node_url: str, rpc_url: str, keystore: Path | None, deposit: int,
           channels_dir: Path | None) -> Payer:
    """A payer for the node with a channel of the verifier's own (opened with ``deposit``
    if there is none; a saved one is checked on chain first)."""
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.cli.wallet_common import unlock_wallet
    from agoranet.config import default_home
    from agoranet.payments.pay.payer import Payer

    account = unlock_wallet(keystore)
    w3 = connect(rpc_url)
    addresses = resolve_addresses(int(w3.eth.chain_id))
    root = channels_dir or default_home() / "verify" / "channels"
    folder = root / hashlib.sha256(node_url.encode()).hexdigest()[:16]
    payer = Payer(node_url, w3, addresses, account=account, state_dir=folder, top_up=deposit)
    try:
        if payer.state is None:
            payer.open(deposit)
        else:
            payer.reconcile()
    except BaseException:
        payer.close()
        raise
    return payer
