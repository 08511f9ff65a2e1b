"""``agoranet reputation show | export | import``: the gateway's node scores, shared signed."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from agoranet.cli.output import Col, Listing, emit, listing_options, when
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


@click.group()
def reputation() -> None:
    """Node scores from audits, receipts and failures; signed lists to share them."""


@reputation.command()
@_log_option
@listing_options(amounts=False)
def show(reputation_log: Path | None, listing: Listing) -> None:
    """This gateway's record of each node, and the verdicts imported from trusted lists."""
    from agoranet.gateway.reputation import Reputation

    store = Reputation(_settings(reputation_log).reputation_path())
    try:
        records = [(r, store.ban(r.node, r.url)) for r in store.records()]
        imported = store.imported()
    finally:
        store.close()
    cols = (Col("node", key=True), Col("models"), Col("score", right=True),
            Col("ok", right=True), Col("failed", right=True), Col("state"),
            Col("url", wide=True), Col("receipts", right=True, wide=True),
            Col("audits ok/failed", wide=True), Col("tokens audited", right=True, wide=True),
            Col("last verdict", wide=True), Col("last seen", wide=True, keep=True))
    rows = [[r.node, ", ".join(r.models) or "-", f"{r.score:.3f}", str(r.successes),
             str(r.failures + r.unauditable),
             f"banned until {when(ban.until)}: {ban.reason}" if ban else "ok",
             r.url or "-", str(r.receipts), f"{r.audits_passed}/{r.audits_failed}",
             str(r.tokens_audited), r.last_verdict or "-", when(r.last_seen)]
            for r, ban in records]
    data = {"nodes": [{"node": r.node, "url": r.url, "models": list(r.models),
                       "score": r.score, "successes": r.successes,
                       "failures": r.failures + r.unauditable, "receipts": r.receipts,
                       "audits_passed": r.audits_passed, "audits_failed": r.audits_failed,
                       "tokens_audited": r.tokens_audited, "last_verdict": r.last_verdict,
                       "last_seen": r.last_seen,
                       "banned_until": ban.until if ban else None,
                       "ban_reason": ban.reason if ban else None} for r, ban in records],
            "imported": [{"signer": v.signer, "node": v.node, "entry": v.entry,
                          "audits_failed": v.audits_failed, "banned_until": v.banned_until,
                          "imported_at": at} for v, at in imported]}
    emit(listing, cols, rows, data, title="reputation", empty="no nodes yet")
    if imported and not listing.as_json:
        click.echo("")
        lists = (Col("signer", key=True), Col("node", key=True), Col("score", right=True),
                 Col("audits ok/failed"), Col("banned until", keep=True), Col("imported", wide=True))
        emit(listing, lists,
             [[v.signer, v.node, str(v.entry.get("score", "-")),
               f"{v.entry.get('audits_passed', 0)}/{v.audits_failed}", when(v.banned_until),
               when(at)] for v, at in imported],
             None, title="imported from trusted lists")


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
