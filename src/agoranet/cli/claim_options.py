"""The options of when a seller (a node, a tool server) claims its vouchers on chain,
shared by ``agoranet node`` and ``agoranet tools serve``; defaults from
:class:`~agoranet.config.NodeSettings`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from agoranet.config import NodeSettings

__all__ = ["claim_options"]

F = TypeVar("F", bound=Callable[..., Any])


def _default(field: str) -> Any:
    return NodeSettings.model_fields[field].default


def claim_options(unit: str) -> Callable[[F], F]:
    """``--settle-interval`` and the three claim thresholds; ``unit`` names what is sold
    ("requests", "calls")."""

    def decorate(fn: F) -> F:
        for option in reversed([
            click.option("--settle-interval", type=click.FloatRange(min=0.05),
                         default=_default("settle_interval"), show_default=True,
                         help="Seconds between checks whether a claim is due."),
            click.option("--claim-min-amount", type=click.IntRange(min=0),
                         default=_default("claim_min_amount"), show_default=True,
                         help="Claim a channel once this much (base units) is unclaimed."),
            click.option("--claim-max-requests", type=click.IntRange(min=1),
                         default=_default("claim_max_requests"), show_default=True,
                         help=f"...or once this many paid {unit} are unclaimed."),
            click.option("--claim-max-age", type=click.FloatRange(min=0),
                         default=_default("claim_max_age"), show_default=True,
                         help="...or once the oldest unclaimed charge is this old (s)."),
        ]):
            fn = option(fn)
        return fn

    return decorate
