"""Command-line options that become settings: only the ones the user actually gave.

A click option's default fills in a value the user never set; passed into a
settings object it would silently override that setting's environment variable
(``AGORANET_GATEWAY_BUDGET=100`` lost to ``--budget``'s default ``None``). So
commands build their settings from :func:`user_set` only: the options whose value
came from the command line (or an ``envvar`` click reads, or a default map),
never from the option's default. Every other setting then comes from the
environment, or the settings' own default. A value given as ``0`` counts as set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
from click.core import ParameterSource

__all__ = ["user_set"]


def user_set(ctx: click.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` (parameter name -> value) the user set for ``ctx``'s command."""
    return {name: value for name, value in values.items()
            if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)}
