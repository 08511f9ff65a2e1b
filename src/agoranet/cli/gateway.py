"""``agoranet gateway``, ``agoranet nodes`` and ``agoranet spend``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console

from agoranet.cli.output import Col, Listing, emit, listing_options, say
from agoranet.cli.user_options import user_set
from agoranet.config import GatewaySettings
from agoranet.errors import ConfigError

__all__ = ["gateway", "gateway_settings", "nodes", "serve_gateway", "spend"]

console = Console()


@click.command()
@click.option("--node", "node_urls", multiple=True, help="A node's URL (repeatable).")
@click.option("--tools", "tools", multiple=True, metavar="URL",
              help="A paid tool server's URL to buy tools from (repeatable).")
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
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines as text or JSON (one line per request).")
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
    if "tools" in values:
        values["tools"] = list(values["tools"])
    settings = GatewaySettings(**values)
    if trust:
        settings.reputation_trust = [*settings.reputation_trust, *trust]
    if trust_lists:
        settings.reputation_lists = [*settings.reputation_lists, *trust_lists]
    if not settings.nodes and not settings.registry_rpc_url and not settings.tools:
        raise ConfigError("give --node URL (repeatable) or --registry-rpc-url to discover nodes")
    return settings


def serve_gateway(settings: GatewaySettings) -> None:
    """Check the port, the wallet and its chain, probe the nodes (all before a reference
    model loads), then build the gateway, print its banner and serve."""
    from agoranet.agents.mcp_http import create_agent_gateway_app
    from agoranet.api.logformat import configure_logging
    from agoranet.api.server import ServerLimits, serve
    from agoranet.cli.gateway_banner import gateway_banner, probe_nodes, probe_tool_sellers
    from agoranet.cli.preflight import check_port_free, connect_chain_or_hint
    from agoranet.gateway.app import build_service

    configure_logging(settings.log_format)
    check_port_free(settings.host, settings.port, "gateway")
    account = None
    if settings.rpc_url:
        from agoranet.cli.wallet_common import unlock_wallet

        account = unlock_wallet(settings.keystore)
        connect_chain_or_hint(settings.rpc_url)
    probes = probe_nodes(settings)
    tool_probes = probe_tool_sellers(settings)
    service = build_service(settings, account=account)
    keys = None
    if not settings.open:
        from agoranet.gateway.keysetup import start_keys

        started = start_keys(settings, service.spend, service.budget)
        keys = started.store
        if started.lost:
            console.print(f"settled {started.lost} base units reserved by a gateway that died "
                          "(spend log: outcome 'lost')")
    app = create_agent_gateway_app(service, settings, keys)
    from agoranet.dashboard import mount_gateway_dashboard

    mount_gateway_dashboard(app, service, keys, settings.spend_log_path())
    gateway_banner(console, settings, payer=account.address if account else None,
                   spent=service.budget.spent, probes=probes,
                   owner_key=started.owner_key if keys is not None else None,
                   tool_probes=tool_probes)
    serve(app, settings.host, settings.port, ServerLimits(
        settings.header_timeout_s, settings.keep_alive_s, settings.max_connections),
        settings.http_protocol)


@click.command()
@click.option("--gateway", "gateway_url", default="http://127.0.0.1:8402", show_default=True)
@listing_options()
def nodes(gateway_url: str, listing: Listing) -> None:
    """The gateway's nodes: prices (stablecoin per 1M tokens in/out), speed, health."""
    try:
        data = httpx.get(f"{gateway_url.rstrip('/')}/agoranet/nodes", timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"cannot reach the gateway at {gateway_url}: {exc}") from exc
    cols = (Col("node", key=True), Col("models"), Col("in/out per 1M", keep=True), Col("ok", right=True),
            Col("failed", right=True), Col("score", right=True), Col("state"),
            Col("ttft ms", right=True, wide=True), Col("tok/s", right=True, wide=True),
            Col("audits ok/failed", wide=True), Col("tokens audited", right=True, wide=True),
            Col("last verdict", wide=True))
    rows = []
    for row in data["nodes"]:
        prices = ", ".join(f"{listing.money(p['input_per_million'])}/"
                           f"{listing.money(p['output_per_million'])}"
                           for p in row["price"].values())
        rows.append([row["url"], ", ".join(row["models"]) or "-", prices or "-",
                     str(row["successes"]), str(row["failures"]),
                     f"{row['score']:.3f}" if row.get("score") is not None else "-",
                     _state(row),
                     f"{row['ttft_ms']:.0f}" if row["ttft_ms"] is not None else "-",
                     f"{row['tokens_per_s']:.0f}" if row["tokens_per_s"] is not None else "-",
                     f"{_count(row.get('audits_passed'))}/{_count(row.get('audits_failed'))}",
                     _count(row.get("tokens_audited")), row.get("last_verdict") or "-"])
    emit(listing, cols, rows, data, empty="no nodes")
    audits = data.get("audits")
    if not listing.as_json and audits and audits.get("allowance") is not None:
        say(f"audits of {audits['model']}: spent {listing.money(audits['spent'])} of "
            f"{listing.money(audits['allowance'])} allowed "
            f"({audits['budget_share']:.0%} of request spend + "
            f"{listing.money(audits['floor'])}), {audits['skipped']} skipped over budget",
            wide=listing.wide)


def _count(value: object) -> str:
    return "-" if value is None else str(value)


def _state(row: dict[str, object]) -> str:
    if row["banned"]:
        reason = row.get("ban_reason")
        return f"banned: {reason}" if reason else "banned"
    return "no offer" if row["offer_error"] else "ok"


@click.command()
@click.option("--by", type=click.Choice(["model", "node", "day", "key"]), default="model",
              show_default=True)
@click.option("--spend-log", type=click.Path(dir_okay=False, path_type=Path), default=None)
@listing_options()
def spend(by: str, spend_log: Path | None, listing: Listing) -> None:
    """Totals from the gateway's spend log (stablecoin; --base-units for base units)."""
    from agoranet.gateway.spendlog import SpendLog

    settings = GatewaySettings(spend_log=spend_log) if spend_log else GatewaySettings()
    path = settings.spend_log_path()
    if not path.exists():
        raise ConfigError(f"no spend log at {path} yet")
    log = SpendLog(path)
    try:
        tables = [(audits, log.totals(by, audits=audits)) for audits in (False, True)]
        audits_total, total = log.audit_total(), log.total()
    finally:
        log.close()
    if listing.as_json:
        click.echo(json.dumps({
            kind: [{by: key, "count": count, "tokens": tokens, "amount": amount,
                    "receipted": receipted}
                   for key, count, tokens, amount, receipted in rows]
            for kind, rows in (("spend", tables[0][1]), ("audits", tables[1][1]))
        } | {"total": total, "audits_total": audits_total}, indent=2))
        return
    for audits, rows in tables:
        if audits and not rows:
            continue
        cols = (Col(by, key=by == "node"), Col("audits" if audits else "requests", right=True),
                Col("tokens", right=True), Col("amount", right=True),
                Col("by signed receipts", right=True))
        emit(listing, cols, [[key, str(count), str(tokens), listing.money(amount),
                              listing.money(receipted)]
                             for key, count, tokens, amount, receipted in rows],
             None, title=f"{'audits' if audits else 'spend'} by {by}")
    if audits_total:
        share = audits_total / max(1, total - audits_total)
        say(f"audits cost {listing.money(audits_total)}, {share:.2%} of what "
            f"requests cost ({listing.money(total - audits_total)})", wide=listing.wide)
