"""``agoranet tools serve``: sell tools over MCP and HTTP, paid per call with x402."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from agoranet.cli.claim_options import claim_options
from agoranet.cli.wallet_common import keystore_option, rpc_option, unlock_wallet
from agoranet.errors import AgoranetError, ConfigError

if TYPE_CHECKING:
    from agoranet.cli.preflight import LedgerLock
    from agoranet.node.payment_setup import NodePayments

__all__ = ["tools"]

console = Console()


@click.group()
def tools() -> None:
    """Paid tools: sell Python functions or another MCP server's tools."""


@tools.command()
@click.argument("target", metavar="MODULE:OBJECT", required=False)
@click.option("--mcp-upstream", "upstream_command", metavar="'CMD ARGS'", default=None,
              help="Sell the tools of the MCP server this command starts (spoken to over "
                   "stdio), unchanged.")
@click.option("--mcp-upstream-url", "upstream_url", metavar="URL", default=None,
              help="Sell the tools of the MCP server at this streamable-HTTP URL, unchanged.")
@click.option("--price", "prices", metavar="NAME=AMOUNT", multiple=True,
              help="The price of an upstream tool in base units per call (1000000 = 1 USDC); "
                   "'*=AMOUNT' prices every tool not named. Repeat per tool. Every upstream "
                   "tool needs a price: an unpriced one stops the start.")
@click.option("--name", default=None, help="The server's name (MCP and the offer).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8500, show_default=True)
@click.option("--public-url", default=None,
              help="The URL buyers reach this server at, for its offer [default: as asked].")
@click.option("--free", is_flag=True, help="Serve without payment, whatever the prices.")
@click.option("--schemes", default="batch-settlement,exact", show_default=True,
              metavar="NAME[,NAME]", help="The x402 schemes buyers may pay with.")
@rpc_option
@keystore_option
@click.option("--ledger", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The SQLite ledger of vouchers and receipts "
                   "[default: ~/.agoranet/tools/ledger.sqlite].")
@claim_options("calls")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1024 * 1024,
              show_default=True, help="Largest arguments of one call.")
@click.option("--max-depth", type=click.IntRange(min=1, max=200), default=32,
              show_default=True, help="Deepest nesting of one call's arguments.")
def serve(target: str | None, upstream_command: str | None, upstream_url: str | None,
          prices: tuple[str, ...], **options: Any) -> None:
    """Serve tools: POST /tools/NAME (x402 over HTTP), /mcp (MCP with x402's MCP
    transport), GET /tools, and the signed offer at /.well-known/agoranet.

    MODULE:OBJECT names an agoranet.tools.ToolServer (or a function returning one) whose
    typed functions carry their prices. With --mcp-upstream or --mcp-upstream-url another
    MCP server's tools are sold as they are, at the --price given to each. Payments:
    exact (one on-chain transfer per call) and batch-settlement (channels, claimed on
    chain in batches), or those of --schemes; receipts count one call and the price.
    """
    from agoranet.api.server import run
    from agoranet.cli.preflight import check_port_free
    from agoranet.tools.app import serve_tools
    from agoranet.tools.limits import ArgumentLimits
    from agoranet.tools.loading import load_tool_server
    from agoranet.tools.server import ToolServer
    from agoranet.tools.upstream import PriceList, Upstream

    upstream = None
    if upstream_command is not None or upstream_url is not None:
        upstream = (Upstream(upstream_command, upstream_url), PriceList.parse(prices))
    elif prices:
        raise ConfigError("--price is for the tools of --mcp-upstream or --mcp-upstream-url; "
                          "a Python tool carries its price in its code")
    if target is None and upstream is None:
        raise ConfigError("say what to serve: MODULE:OBJECT, --mcp-upstream 'CMD' or "
                          "--mcp-upstream-url URL")
    server = load_tool_server(target) if target else ToolServer()
    if options["name"]:
        server.name = options["name"]
    check_port_free(options["host"], options["port"], "tool server")
    payments, lock = (None, None) if options["free"] else _payments(options)
    limits = ArgumentLimits(options["max_body_bytes"], options["max_depth"])
    where = f"http://{options['host']}:{options['port']}"
    if payments is not None:
        terms = payments.acceptor.terms
        console.print(f"selling tools at {where}/tools and {where}/mcp, paid to "
                      f"{terms.pay_to} on {terms.network}")
    else:
        console.print(Text(f"serving tools FREE at {where}/tools and {where}/mcp",
                           style="bold yellow"))
    try:
        run(serve_tools(server, payments, host=options["host"], port=options["port"],
                        limits=limits, upstream=upstream, public_url=options["public_url"]))
    except BaseExceptionGroup as group:  # the upstream's task group wraps what it raised
        first = _first_error(group)
        if first is None:
            raise
        raise first from group
    finally:
        if lock is not None:
            lock.release()


def _first_error(group: BaseExceptionGroup[Any]) -> AgoranetError | None:
    for exc in group.exceptions:
        if isinstance(exc, AgoranetError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_error(exc)
            if found is not None:
                return found
    return None


def _payments(options: dict[str, Any]) -> tuple[NodePayments, LedgerLock]:
    """The node's payment parts (acceptor, ledger, settler) under the wallet's key."""
    from agoranet.cli.node_banner import CLAIM_GAS, no_gas_warning
    from agoranet.cli.preflight import (
        connect_chain_or_hint,
        gas_cost,
        hold_ledger,
        native_balance,
    )
    from agoranet.config import NodeSettings, default_home
    from agoranet.node.payment_setup import build_payments

    schemes = _schemes(options["schemes"])  # before the wallet and the chain
    ledger = options["ledger"] or default_home() / "tools" / "ledger.sqlite"
    settings = NodeSettings(
        host=options["host"], port=options["port"], rpc_url=options["rpc_url"],
        keystore=options["keystore"], ledger_path=ledger, ledger_url=None,
        settle_interval=options["settle_interval"],
        claim_min_amount=options["claim_min_amount"],
        claim_max_requests=options["claim_max_requests"],
        claim_max_age=options["claim_max_age"], settle_exact_before=False)
    account = unlock_wallet(settings.keystore)
    w3 = connect_chain_or_hint(settings.rpc_url)
    gas = native_balance(w3, account.address)
    if gas < gas_cost(w3, CLAIM_GAS):
        console.print(Text(no_gas_warning(account.address, gas), style="bold yellow"))
    lock = hold_ledger(ledger)  # one process per SQLite ledger
    try:
        return build_payments(settings, account, schemes=schemes), lock
    except BaseException:
        lock.release()
        raise


def _schemes(text: str) -> tuple[str, ...]:
    """The schemes of ``--schemes``: known names, at least one, each once."""
    from agoranet.payments.schemes import available_schemes

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    known = available_schemes()
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise ConfigError(f"--schemes {text!r}: name one or more of {', '.join(known)}"
                          + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return names
