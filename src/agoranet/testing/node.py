"""The test-only node: ``python -m agoranet.testing node [OPTIONS]``.

Every option of ``agoranet node``, plus the wrappers a test or the demo asks for by
name, applied through :class:`~agoranet.node.hooks.NodeHooks` (the production node
knows none of them):

- ``--cheat SPEC``: serve something cheaper under the honest hash
  (:mod:`agoranet.testing.cheats`: int8, int4, smaller:PATH, template, nosystem, replay);
- ``--cheat-payments NAME``: a dishonest ledger (:mod:`agoranet.testing.payment_cheats`);
- ``--chaos-delay-ms MS``, ``--chaos-fail-after N``, ``--chaos-fail-every K``,
  ``--chaos-stall-after N``: slow, cut or stalled streams (:mod:`agoranet.testing.chaos`);
- ``--chaos-kill-at-receipt K``: SIGKILL the node as a stream's K-th running receipt,
  recorded in its ledger, is about to be sent (:mod:`agoranet.testing.receipt_kill`).

Tests start it with ``running_node(args, module="agoranet.testing")``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import click
from starlette.middleware import Middleware

from agoranet.cli.node import node as production_node
from agoranet.cli.node import node_settings, serve
from agoranet.errors import ConfigError
from agoranet.node.hooks import NodeHooks
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.testing.chaos import chaos_middleware
from agoranet.testing.cheats import cheating_engine, make_cheat
from agoranet.testing.payment_cheats import PAYMENT_CHEATS, cheating_ledger

__all__ = ["TESTING_OPTIONS", "node", "wrapper_hooks"]


def _check_cheat(_ctx: click.Context, _param: click.Parameter, spec: str | None) -> str | None:
    if spec is not None:
        try:
            make_cheat(spec)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--cheat") from exc
    return spec


def _check_payment_cheat(_ctx: click.Context, _param: click.Parameter,
                         name: str | None) -> str | None:
    if name is not None and name not in PAYMENT_CHEATS:
        raise click.BadParameter(f"unknown payment cheat {name!r}; known: "
                                 f"{', '.join(sorted(PAYMENT_CHEATS))}",
                                 param_hint="--cheat-payments")
    return name


TESTING_OPTIONS = [
    click.Option(["--chaos-delay-ms"], type=click.IntRange(min=0), default=0,
                 help="Sleep this many ms before each streamed frame (chaos delay)."),
    click.Option(["--chaos-fail-after"], type=click.IntRange(min=1), default=None,
                 help="Cut streams after this many frames (chaos cut)."),
    click.Option(["--chaos-fail-every"], type=click.IntRange(min=1), default=1,
                 help="Cut only every N-th stream."),
    click.Option(["--chaos-stall-after"], type=click.IntRange(min=0), default=None,
                 help="After N tokens send only keep-alives: a stalled, live node (chaos stall)."),
    click.Option(["--chaos-kill-at-receipt"], type=click.IntRange(min=1), default=None,
                 help="SIGKILL the node once it has recorded a stream's K-th running receipt, "
                      "before sending it (chaos kill-at-receipt)."),
    click.Option(["--cheat"], default=None, callback=_check_cheat,
                 help="Serve something cheaper under the honest hash (int8, int4, "
                      "smaller:PATH, template, nosystem, replay)."),
    click.Option(["--cheat-payments"], default=None, callback=_check_payment_cheat,
                 help="A dishonest ledger (resync: charge every voucher in full and claim it)."),
]
_TESTING_NAMES = tuple(str(option.name) for option in TESTING_OPTIONS)


def _create_cheating_engine(spec: str, name: str, **options: Any) -> Any:
    if name != "transformers":
        raise ConfigError(f"--cheat wraps the transformers engine, not {name!r}")
    options = {k: v for k, v in options.items() if k not in ("base_url", "api_key")}
    return cheating_engine(spec, **options)


def wrapper_hooks(*, chaos_delay_ms: int = 0, chaos_fail_after: int | None = None,
                  chaos_fail_every: int = 1, chaos_stall_after: int | None = None,
                  chaos_kill_at_receipt: int | None = None,
                  cheat: str | None = None, cheat_payments: str | None = None) -> NodeHooks:
    """The hooks that apply the named wrappers (the options above) to a node."""
    middleware: list[Middleware] = []
    if chaos_delay_ms:
        middleware.append(chaos_middleware(f"delay:{chaos_delay_ms}"))
    if chaos_fail_after is not None:
        middleware.append(chaos_middleware(f"cut:{chaos_fail_after}/{chaos_fail_every}"))
    if chaos_stall_after is not None:
        middleware.append(chaos_middleware(f"stall:{chaos_stall_after}"))
    if chaos_kill_at_receipt is not None:
        middleware.append(chaos_middleware(f"kill-at-receipt:{chaos_kill_at_receipt}"))
    ledger = None
    if cheat_payments is not None:
        def ledger(path: Path) -> SqliteLedger:
            return cheating_ledger(cheat_payments, path)
    engine = partial(_create_cheating_engine, cheat) if cheat is not None else None
    return NodeHooks(create_engine=engine, open_ledger=ledger, middleware=tuple(middleware))


@click.pass_context
def _serve(ctx: click.Context, /, **options: Any) -> None:
    hooks = wrapper_hooks(**{name: options.pop(name) for name in _TESTING_NAMES})
    no_adapters = options.pop("no_adapters")
    settings = node_settings(ctx, options)
    if hooks.open_ledger is not None and settings.ledger_url is not None:
        raise ConfigError("--cheat-payments works on a SQLite ledger only")
    serve(settings, adapters=not no_adapters, hooks=hooks)


node = click.Command(
    "node", callback=_serve, params=[*production_node.params, *TESTING_OPTIONS],
    help="TESTS AND DEMOS ONLY: `agoranet node` with cheats and chaos applied by name.")
