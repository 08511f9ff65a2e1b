"""``agoranet gateway``, ``agoranet nodes`` and ``agoranet spend``."""

from __future__ import annotations

from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.table import Table

from agoranet.config import GatewaySettings
from agoranet.errors import ConfigError

__all__ = ["gateway", "nodes", "spend"]

console = Console()


@click.command()
@click.option("--node", "node_urls", multiple=True, help="A node's URL (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8402, show_default=True)
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Routing policy file (JSON or TOML).")
@click.option("--budget", type=click.IntRange(min=0), default=None,
              help="Total spend allowed, in stablecoin base units.")
@click.option("--spend-log", type=click.Path(dir_okay=False, path_type=Path), default=None)
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
def gateway(node_urls: tuple[str, ...], host: str, port: int, policy_file: Path | None,
            budget: int | None, spend_log: Path | None, registry_rpc_url: str | None,
            rpc_url: str | None, keystore: Path | None, deposit: int,
            audit_reference: str | None, audit_share: float) -> None:
    """Run the local OpenAI-compatible gateway over the network's nodes."""
    import uvicorn

    from agoranet.gateway.app import build_service, create_gateway_app

    if not node_urls and not registry_rpc_url:
        raise ConfigError("give --node URL (repeatable) or --registry-rpc-url to discover nodes")
    settings = GatewaySettings(host=host, port=port, nodes=list(node_urls),
                               policy_file=policy_file, budget=budget, spend_log=spend_log,
                               registry_rpc_url=registry_rpc_url, rpc_url=rpc_url,
                               keystore=keystore, deposit=deposit,
                               audit_reference=audit_reference, audit_share=audit_share)
    account = None
    if rpc_url:
        from agoranet.cli.wallet_common import unlock_wallet

        account = unlock_wallet(keystore)
    app = create_gateway_app(build_service(settings, account=account))
    where = f"{len(node_urls)} node(s)" + (" and the registry" if registry_rpc_url else "")
    console.print(f"agoranet gateway on http://{host}:{port}/v1 over {where}")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


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
                   "last audit", "state"):
        table.add_column(column)
    for row in data["nodes"]:
        prices = ", ".join(f"{p['input_per_million']}/{p['output_per_million']}"
                           for p in row["price"].values())
        state = "banned" if row["banned"] else ("no offer" if row["offer_error"] else "ok")
        table.add_row(row["url"], ", ".join(row["models"]), prices,
                      f"{row['ttft_ms']:.0f}" if row["ttft_ms"] is not None else "-",
                      f"{row['tokens_per_s']:.0f}" if row["tokens_per_s"] is not None else "-",
                      str(row["successes"]), str(row["failures"]),
                      (row.get("audits") or ["-"])[-1].split(":")[0], state)
    console.print(table)


@click.command()
@click.option("--by", type=click.Choice(["model", "node", "day"]), default="model",
              show_default=True)
@click.option("--spend-log", type=click.Path(dir_okay=False, path_type=Path), default=None)
def spend(by: str, spend_log: Path | None) -> None:
    """Totals from the gateway's spend log."""
    from agoranet.gateway.spendlog import SpendLog

    path = GatewaySettings(spend_log=spend_log).spend_log_path()
    if not path.exists():
        raise ConfigError(f"no spend log at {path} yet")
    log = SpendLog(path)
    table = Table(title=f"spend by {by}")
    for column in (by, "requests", "tokens", "amount (base units)"):
        table.add_column(column, justify="left" if column == by else "right")
    for key, count, tokens, amount in log.totals(by):
        table.add_row(key, str(count), str(tokens), str(amount))
    log.close()
    console.print(table)
