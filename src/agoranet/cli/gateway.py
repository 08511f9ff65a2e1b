"""``agoranet gateway``, ``agoranet nodes`` and ``agoranet spend``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table

from agoranet.cli.user_options import user_set
from agoranet.config import GatewaySettings
from agoranet.errors import ConfigError

__all__ = ["gateway", "gateway_settings", "nodes", "serve_gateway", "spend"]

console = Console()


@click.command()
@click.option("--node", "node_urls", multiple=True, help="A node's URL (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8402, show_default=True)
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Routing policy file (JSON or TOML).")
@click.option("--token-timeout", "token_timeout_s", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Seconds an answer may go without a new token before the "
              "next node takes over [default: the policy's, 30].")
@click.option("--budget", type=click.IntRange(min=0), default=None,
              help="Total spend allowed, in stablecoin base units.")
@click.option("--spend-log", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--open", "open", is_flag=True, default=False,
              help="Serve any local process without a key (the global budget alone applies).")
@click.option("--key-store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Gateway keys [default: keys.sqlite beside the spend log].")
@click.option("--registry-rpc-url", default=None,
              help="Also discover nodes from the provider registry on this chain.")
@click.option("--rpc-url", default=None, help="Pay paid nodes on this chain (needs a wallet).")
@click.option("--keystore", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The wallet that pays [default: ~/.agoranet/wallet/keystore.json].")
@click.option("--deposit", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Deposit of each node's channel, in base units.")
@click.option("--audit-reference", default=None,
              help="Audit nodes against these weights (a directory or Hub id you trust).")
@click.option("--audit-share", type=click.FloatRange(0, 1), default=0.02, show_default=True,
              help="Share of requests after which the serving node is audited.")
@click.option("--audit-budget-share", type=click.FloatRange(0, 1), default=0.02,
              show_default=True,
              help="Audits may spend at most this share of what requests spend.")
@click.option("--audit-budget-floor", type=click.IntRange(min=0), default=0, show_default=True,
              help="Base units audits may spend in all regardless of the share.")
@click.option("--reputation-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reputation store [default: reputation.sqlite beside the spend log].")
@click.option("--trust", "trust", multiple=True, metavar="ADDRESS",
              help="Read score lists signed by this address (repeatable; opt-in).")
@click.option("--trust-list", "trust_lists", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A signed score list to import at start; its signer must be trusted.")
@click.pass_context
def gateway(ctx: click.Context, /, **options: Any) -> None:
    """Run the local OpenAI-compatible gateway over the network's nodes."""
    serve_gateway(gateway_settings(ctx, options))


def gateway_settings(ctx: click.Context, options: dict[str, Any]) -> GatewaySettings:
    """The gateway's settings: the options the user gave over the ``AGORANET_GATEWAY_*``
    environment over the defaults (an option's own default never hides the environment)."""
    trust, trust_lists = options.pop("trust"), options.pop("trust_lists")
    values = user_set(ctx, options)
    if "node_urls" in values:
        values["nodes"] = list(values.pop("node_urls"))
    settings = GatewaySettings(**values)
    if trust:
        settings.reputation_trust = [*settings.reputation_trust, *trust]
    if trust_lists:
        settings.reputation_lists = [*settings.reputation_lists, *trust_lists]
    if not settings.nodes and not settings.registry_rpc_url:
        raise ConfigError("give --node URL (repeatable) or --registry-rpc-url to discover nodes")
    return settings


def serve_gateway(settings: GatewaySettings) -> None:
    from agoranet.api.server import ServerLimits, serve
    from agoranet.gateway.app import build_service, create_gateway_app

    account = None
    if settings.rpc_url:
        from agoranet.cli.wallet_common import unlock_wallet

        account = unlock_wallet(settings.keystore)
    service = build_service(settings, account=account)
    keys = None
    if not settings.open:
        from agoranet.gateway.keysetup import start_keys

        started = start_keys(settings, service.spend, service.budget)
        keys = started.store
        if started.lost:
            console.print(f"settled {started.lost} base units reserved by a gateway that died "
                          "(spend log: outcome 'lost')")
    app = create_gateway_app(service, settings, keys)
    where = f"{len(settings.nodes)} node(s)" + (" and the registry"
                                                if settings.registry_rpc_url else "")
    console.print(f"agoranet gateway on http://{settings.host}:{settings.port}/v1 over {where}")
    if keys is None:
        console.print("open: any local process may spend (--open); the global budget applies")
    else:
        console.print(f"needs a key; the owner's: OPENAI_API_KEY=$(cat {started.owner_key}) "
                      f"OPENAI_BASE_URL=http://{settings.host}:{settings.port}/v1")
    serve(app, settings.host, settings.port, ServerLimits(
        settings.header_timeout_s, settings.keep_alive_s, settings.max_connections))


@click.command()
@click.option("--gateway", "gateway_url", default="http://127.0.0.1:8402", show_default=True)
def nodes(gateway_url: str) -> None:
    """The gateway's nodes: prices, speed, health."""
    try:
        data = httpx.get(f"{gateway_url.rstrip('/')}/agoranet/nodes", timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"cannot reach the gateway at {gateway_url}: {exc}") from exc
    table = Table(title="nodes")
    for column in ("node", "models", "price in/out per 1M", "ttft ms", "tok/s", "ok", "failed",
                   "audits ok/failed", "tokens audited", "last verdict", "score", "state"):
        table.add_column(column)
    for row in data["nodes"]:
        prices = ", ".join(f"{p['input_per_million']}/{p['output_per_million']}"
                           for p in row["price"].values())
        table.add_row(row["url"], ", ".join(row["models"]), prices,
                      f"{row['ttft_ms']:.0f}" if row["ttft_ms"] is not None else "-",
                      f"{row['tokens_per_s']:.0f}" if row["tokens_per_s"] is not None else "-",
                      str(row["successes"]), str(row["failures"]),
                      f"{_count(row.get('audits_passed'))}/{_count(row.get('audits_failed'))}",
                      _count(row.get("tokens_audited")), row.get("last_verdict") or "-",
                      f"{row['score']:.3f}" if row.get("score") is not None else "-",
                      _state(row))
    console.print(table)
    audits = data.get("audits")
    if audits and audits.get("allowance") is not None:
        console.print(f"audits of {audits['model']}: spent {audits['spent']} of "
                      f"{audits['allowance']} allowed ({audits['budget_share']:.0%} of request "
                      f"spend + {audits['floor']}), {audits['skipped']} skipped over budget")


def _count(value: object) -> str:
    return "-" if value is None else str(value)


def _state(row: dict[str, object]) -> str:
    if row["banned"]:
        reason = row.get("ban_reason")
        return f"[bold red]banned[/]: {reason}" if reason else "[bold red]banned[/]"
    return "no offer" if row["offer_error"] else "ok"


@click.command()
@click.option("--by", type=click.Choice(["model", "node", "day", "key"]), default="model",
              show_default=True)
@click.option("--spend-log", type=click.Path(dir_okay=False, path_type=Path), default=None)
def spend(by: str, spend_log: Path | None) -> None:
    """Totals from the gateway's spend log."""
    from agoranet.gateway.spendlog import SpendLog

    settings = GatewaySettings(spend_log=spend_log) if spend_log else GatewaySettings()
    path = settings.spend_log_path()
    if not path.exists():
        raise ConfigError(f"no spend log at {path} yet")
    log = SpendLog(path)
    try:
        for title, audits in ((f"spend by {by}", False), (f"audits by {by}", True)):
            rows = log.totals(by, audits=audits)
            if audits and not rows:
                continue
            table = Table(title=title)
            for column in (by, "audits" if audits else "requests", "tokens",
                           "amount (base units)", "of it by signed receipts"):
                table.add_column(column, justify="left" if column == by else "right")
            for key, count, tokens, amount, receipted in rows:
                table.add_row(key, str(count), str(tokens), str(amount), str(receipted))
            console.print(table)
        audits_total, total = log.audit_total(), log.total()
        if audits_total:
            share = audits_total / max(1, total - audits_total)
            console.print(f"audits cost {audits_total} base units, {share:.2%} of what "
                          f"requests cost ({total - audits_total})")
    finally:
        log.close()
