"""``agoranet reputation show | export | import``: the gateway's node scores, shared signed."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from agoranet.cli.wallet_common import keystore_option, unlock_wallet
from agoranet.config import GatewaySettings

__all__ = ["reputation"]

console = Console(highlight=False)

_log_option = click.option(
    "--reputation-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The gateway's reputation store [default: reputation.sqlite beside its spend log].")


def _settings(reputation_log: Path | None) -> GatewaySettings:
    """The gateway's settings, ``--reputation-log`` over them only when given."""
    return GatewaySettings(reputation_log=reputation_log) if reputation_log else GatewaySettings()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


@click.group()
def reputation() -> None:
    """Node scores from audits, receipts and failures; signed lists to share them."""


@reputation.command()
@_log_option
def show(reputation_log: Path | None) -> None:
    """This gateway's record of each node, and the verdicts imported from trusted lists."""
    from agoranet.gateway.reputation import Reputation

    store = Reputation(_settings(reputation_log).reputation_path())
    try:
        table = Table(title="reputation")
        for column in ("node", "models", "score", "ok", "failed", "receipts",
                       "audits ok/failed", "tokens audited", "last verdict", "last seen",
                       "state"):
            table.add_column(column)
        for r in store.records():
            ban = store.ban(r.node, r.url)
            table.add_row(r.node if r.url in ("", r.node) else f"{r.node}\n{r.url}",
                          ", ".join(r.models),
                          f"{r.score:.3f}", str(r.successes), str(r.failures + r.unauditable),
                          str(r.receipts), f"{r.audits_passed}/{r.audits_failed}",
                          str(r.tokens_audited), r.last_verdict or "-", _when(r.last_seen),
                          f"[bold red]banned until {_when(ban.until)}[/]: {ban.reason}"
                          if ban else "ok")
        console.print(table)
        imported = store.imported()
        if imported:
            lists = Table(title="imported from trusted lists")
            for column in ("signer", "node", "score", "audits ok/failed", "banned until",
                           "imported"):
                lists.add_column(column)
            for verdict, at in imported:
                entry = verdict.entry
                lists.add_row(verdict.signer, verdict.node, str(entry.get("score", "-")),
                              f"{entry.get('audits_passed', 0)}/{verdict.audits_failed}",
                              _when(verdict.banned_until), _when(at))
            console.print(lists)
    finally:
        store.close()


@reputation.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the signed list (JSON).")
@keystore_option
@_log_option
def export(out: Path, keystore: Path | None, reputation_log: Path | None) -> None:
    """Write this gateway's scores as a list signed by its wallet key."""
    from agoranet.gateway.reputation import Reputation
    from agoranet.gateway.scorelist import build_list, sign_list

    account = unlock_wallet(keystore)
    store = Reputation(_settings(reputation_log).reputation_path())
    try:
        signed = sign_list(build_list(store), account)
    finally:
        store.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(signed.model_dump_json(indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {len(signed.entries)} node(s) to {out}, signed by {signed.signer}")


@reputation.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trust", "trust", multiple=True, metavar="ADDRESS",
              help="A signer whose lists you accept (repeatable; also "
                   "AGORANET_GATEWAY_REPUTATION_TRUST).")
@_log_option
def import_(file: Path, trust: tuple[str, ...], reputation_log: Path | None) -> None:
    """Import a signed list from a signer you trust (its failed-audit bans apply here)."""
    from agoranet.gateway.reputation import Reputation
    from agoranet.gateway.scorelist import check_list, read_list, verdicts

    settings = _settings(reputation_log)
    scores = read_list(file)
    signer = check_list(scores, [*settings.reputation_trust, *trust])
    found = verdicts(scores, signer)
    store = Reputation(settings.reputation_path())
    try:
        store.import_verdicts(signer, scores.issued_at, found)
        banned = [v.node for v in found if store.ban(v.node, v.url) is not None]
    finally:
        store.close()
    console.print(f"imported {len(found)} node(s) from {signer}; banned here: "
                  f"{', '.join(banned) if banned else 'none'}")
