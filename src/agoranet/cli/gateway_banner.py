"""What ``agoranet gateway`` checks and says at start: which nodes and tool sellers
answer, which it can pay, and a banner with the paying address, budget, spend log and
the nodes and tool sellers found.

Nodes and tool sellers (``--tools`` and the registry's) are probed once before anything
slow loads (one that does not answer is still kept: the gateway retries it), so an
operator sees at once that the only node is down, that a tool seller's offer would be
refused, or that paid ones wait on a wallet the gateway lacks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agoranet.config import GatewaySettings

__all__ = ["NodeProbe", "ToolProbe", "gateway_banner", "probe_nodes",
           "probe_tool_sellers"]

_PROBE_TIMEOUT_S: Final = 3.0


@dataclass(frozen=True)
class NodeProbe:
    url: str
    error: str | None = None  # why its offer could not be read, or None
    paid: bool = False  # its offer asks payment (x402)


@dataclass(frozen=True)
class ToolProbe:
    url: str  # the seller's root URL
    error: str | None = None  # why its offer could not be read or would be refused
    tools: int = 0  # tools on offer
    paid: bool = False  # it sells for payment (x402)


def probe_nodes(settings: GatewaySettings) -> list[NodeProbe]:
    """Read the offer of each ``--node`` and each registered node, a few seconds at most."""
    from agoranet.errors import AgoranetError
    from agoranet.gateway.directory import normalise_url

    urls = [normalise_url(u) for u in settings.nodes]
    if settings.registry_rpc_url:
        from agoranet.registry.onchain import registry_at
        from agoranet.registry.tool_offer import is_tool_url

        try:  # tool servers' entries are the tool market's (agoranet.gateway.tool_directory)
            urls += [e.url for e in registry_at(settings.registry_rpc_url).entries()
                     if not is_tool_url(e.url)]
        except AgoranetError as exc:
            return [*_probe_all(urls), NodeProbe("the registry", f"unavailable: {exc}")]
    return _probe_all(list(dict.fromkeys(urls)))


def _probe_all(urls: list[str]) -> list[NodeProbe]:
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
        return list(pool.map(_probe, urls))


def probe_tool_sellers(settings: GatewaySettings) -> list[ToolProbe]:
    """Read and check the offer of each ``--tools`` seller and each registered one, a few
    seconds at most (a registry that does not answer is the node probes' warning)."""
    from agoranet.errors import AgoranetError
    from agoranet.registry.tool_offer import is_tool_url, tool_root

    roots = [tool_root(u) for u in settings.tools]
    if settings.registry_rpc_url:
        from agoranet.registry.onchain import registry_at

        with contextlib.suppress(AgoranetError):  # the node probes say it is unavailable
            roots += [tool_root(e.url) for e in registry_at(settings.registry_rpc_url).entries()
                      if is_tool_url(e.url)]
    roots = list(dict.fromkeys(roots))
    if not roots:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(roots))) as pool:
        return list(pool.map(_probe_tools, roots))


def _probe_tools(root: str) -> ToolProbe:
    from pydantic import ValidationError

    from agoranet.errors import OfferMismatchError
    from agoranet.gateway.tool_directory import verify_tool_offer
    from agoranet.registry.tool_offer import ToolOffer

    try:
        response = httpx.get(root + "/.well-known/agoranet", timeout=_PROBE_TIMEOUT_S)
        response.raise_for_status()
        offer = ToolOffer.model_validate_json(response.content)
        verify_tool_offer(offer, root, None)
    except httpx.HTTPError as exc:
        return ToolProbe(root, f"does not answer ({type(exc).__name__}: {exc})")
    except ValidationError as exc:
        return ToolProbe(root, f"sends no valid tool offer ({exc.error_count()} error(s))")
    except OfferMismatchError as exc:
        return ToolProbe(root, f"sends an offer the gateway refuses ({exc})")
    return ToolProbe(root, tools=len(offer.tools), paid=offer.payment is not None)


def _probe(url: str) -> NodeProbe:
    from pydantic import ValidationError

    from agoranet.registry.offer import Offer

    try:
        response = httpx.get(url.removesuffix("/v1") + "/.well-known/agoranet",
                             timeout=_PROBE_TIMEOUT_S)
        response.raise_for_status()
        offer = Offer.model_validate_json(response.content)
    except httpx.HTTPError as exc:
        return NodeProbe(url, f"does not answer ({type(exc).__name__}: {exc})")
    except ValidationError as exc:
        return NodeProbe(url, f"sends no valid offer ({exc.error_count()} error(s))")
    return NodeProbe(url, paid=offer.payment is not None)


def gateway_banner(console: Console, settings: GatewaySettings, *, payer: str | None,
                   spent: int, probes: Sequence[NodeProbe], owner_key: Path | None,
                   tool_probes: Sequence[ToolProbe] = ()) -> None:
    """Print the gateway's banner and a warning line per problem found (fits 80 columns)."""
    base = f"http://{settings.host}:{settings.port}/v1"
    table = Table(title=f"agoranet gateway on {base}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    if owner_key is None:
        table.add_row("access", "open (--open): any local process may spend")
    else:
        table.add_row("access", Text(f"needs a key; the owner's: OPENAI_API_KEY=$(cat "
                                     f"{owner_key}) OPENAI_BASE_URL={base}"))
    if payer is None:
        table.add_row("pays from", "no wallet (give --rpc-url): free nodes only")
    else:
        table.add_row("pays from", Text(f"{payer} via {settings.rpc_url}"))
    budget = "unlimited" if settings.budget is None else f"{settings.budget} base units"
    table.add_row("budget", Text(f"{budget}; spent so far {spent}"))
    table.add_row("spend log", Text(str(settings.spend_log_path())))
    table.add_row("dashboard", Text(f"http://{settings.host}:{settings.port}/" + (
        "" if owner_key is None else " (log in with the owner's key)")))
    answering = [p for p in probes if p.error is None]
    paid = sum(p.paid for p in answering)
    nodes = (f"{len(answering)} of {len(probes)} answering ({paid} paid, "
             f"{len(answering) - paid} free)")
    if settings.registry_rpc_url:
        nodes += f"; registry at {settings.registry_rpc_url}"
    table.add_row("nodes", Text(nodes))
    selling = [p for p in tool_probes if p.error is None]
    if tool_probes or settings.registry_rpc_url:
        tools = sum(p.tools for p in selling)
        table.add_row("tool sellers", Text(
            f"{len(selling)} of {len(tool_probes)} answering, {tools} tool"
            f"{'' if tools == 1 else 's'} ({sum(p.paid for p in selling)} paid, "
            f"{sum(not p.paid for p in selling)} free)"))
    if settings.audit_reference:
        table.add_row("audits", Text(f"against {settings.audit_reference}, "
                                     f"{settings.audit_share:.0%} of requests"))
    console.print(table)
    for probe in probes:
        if probe.error is not None:
            _warn(console, f"{probe.url} {probe.error}; the gateway keeps retrying it")
        elif probe.paid and payer is None:
            _warn(console, f"{probe.url} asks payment and this gateway has no wallet: it "
                  "will not be used (give --rpc-url, and --keystore)")
    if not answering:
        _warn(console, "no node answers yet: requests fail until one does")
    for tool_probe in tool_probes:
        if tool_probe.error is not None:
            _warn(console, f"tool seller {tool_probe.url} {tool_probe.error}; the gateway "
                  "keeps checking it")
        elif tool_probe.paid and payer is None:
            _warn(console, f"tool seller {tool_probe.url} asks payment and this gateway has "
                  "no wallet: its paid tools cannot be bought (give --rpc-url, and --keystore)")


def _warn(console: Console, text: str) -> None:
    console.print(Text(f"warning: {text}", style="bold yellow"))
