"""``agoranet verify``: audit a node against reference weights."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

__all__ = ["verify"]

if TYPE_CHECKING:
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
def verify(node_url: str, reference: str, model: str | None, rounds: int,
           commitments: bool | None) -> None:
    """Check that a node serves the weights it claims (exit 3 if it does not)."""
    from agoranet.engines.hf import load_model
    from agoranet.verify.node_audit import audit_node

    with console.status(f"loading the reference {reference}"):
        loaded = load_model(reference)
    name = model or loaded.info.name
    with console.status(f"auditing {node_url}"):
        audit = audit_node(node_url, name, loaded, rounds=rounds, commitments=commitments)
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
