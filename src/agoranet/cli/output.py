"""What every listing command prints: tables that fit the terminal, dates, money.

One place decides how the CLI shows things, so that no command prints USDC and the next
base units, or Unix times:

* :func:`money` shows base units as decimal stablecoin (``2.50``, ``0.000125``), never
  rounded, or the integer base units when the user asked for ``--base-units``;
* :func:`when` shows a Unix time as a local date and time (``2026-11-29 11:36``);
* :func:`render` lays rows out in at most the terminal's width (80 by default): columns
  marked ``wide`` only appear with ``--wide``, ``cut`` columns are shortened with ``~``,
  and *key* columns (ids, addresses someone needs to copy) are never cut: when they do
  not fit beside the others each row's key gets a line of its own;
* :func:`listing_options` adds ``--wide``, ``--json`` (and ``--base-units``) to a command,
  and :func:`emit` prints either the table or JSON whose amounts are base-unit integers.
"""

from __future__ import annotations

import functools
import json
import shutil
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from agoranet.payments.amounts import STABLECOIN_DECIMALS, format_amount

__all__ = [
    "DEFAULT_WIDTH",
    "Col",
    "Listing",
    "emit",
    "listing_options",
    "money",
    "render",
    "say",
    "terminal_width",
    "when",
]

DEFAULT_WIDTH = 80
_GAP = "  "
_MIN_CUT = 6
F = TypeVar("F", bound=Callable[..., Any])


def money(base: int | None, *, base_units: bool = False,
          decimals: int = STABLECOIN_DECIMALS) -> str:
    """Base units as decimal stablecoin (at least 2 decimals, exact), or as the integer."""
    if base is None:
        return "-"
    if base_units:
        return str(base)
    whole, _, fraction = format_amount(base, decimals).partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}" if fraction else whole


def when(moment: float | None) -> str:
    """A Unix time as a local ``YYYY-MM-DD HH:MM``; ``-`` for none (0 or ``None``)."""
    if not moment:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(moment))


def terminal_width() -> int:
    """The terminal's width (``COLUMNS`` when set), 80 when there is no terminal."""
    return max(40, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)


@dataclass(frozen=True)
class Col:
    """A column: ``key`` cells (ids) are never shortened and may get a line of their own;
    ``keep`` and right-aligned (numbers, money) ones are never shortened either; the others
    may be; ``wide`` ones are only shown with ``--wide``."""

    name: str
    right: bool = False
    wide: bool = False
    key: bool = False
    keep: bool = False  # never shortened, but not a key (dates); numbers (right) never are

    @property
    def cut(self) -> bool:
        return not (self.key or self.keep or self.right)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "~"


def _line(cols: Sequence[Col], cells: Sequence[str], widths: Sequence[int]) -> str:
    out = []
    for col, cell, width in zip(cols, cells, widths, strict=True):
        cell = _cut(cell, width) if col.cut else cell
        out.append(cell.rjust(width) if col.right else cell.ljust(width))
    return _GAP.join(out).rstrip()


def _fit(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> list[int] | None:
    """Column widths that fit ``width`` by shortening ``cut`` columns, or ``None``."""
    widths = [max([len(c.name)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    floor = [min(w, max(_MIN_CUT, len(c.name))) if c.cut else w
             for c, w in zip(cols, widths, strict=True)]
    over = sum(widths) + len(_GAP) * (len(cols) - 1) - width
    while over > 0:
        slack = [w - f for w, f in zip(widths, floor, strict=True)]
        widest = max(range(len(cols)), key=lambda i: slack[i])
        if slack[widest] <= 0:
            return None
        widths[widest] -= 1
        over -= 1
    return widths


def render(cols: Sequence[Col], rows: Sequence[Sequence[str]], *, wide: bool = False,
           width: int | None = None) -> list[str]:
    """The rows as text lines of at most ``width`` characters unless ``wide``.

    With ``wide`` every column is shown in full. Otherwise ``wide`` columns are dropped
    and the rest fit ``width``; if the key columns leave too little room, each key is
    printed on a line of its own with the row's other cells indented below it.
    """
    if wide:
        widths = [max([len(c.name)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
        return [_line(cols, [c.name for c in cols], widths),
                *(_line(cols, r, widths) for r in rows)]
    limit = width or terminal_width()
    shown = [i for i, c in enumerate(cols) if not c.wide]
    kept = [cols[i] for i in shown]
    cells = [[r[i] for i in shown] for r in rows]
    fitted = _fit(kept, cells, limit)
    if fitted is not None:
        return [_line(kept, [c.name for c in kept], fitted), *(_line(kept, r, fitted)
                                                                for r in cells)]
    keys = [i for i, c in enumerate(kept) if c.key]
    rest = [i for i, c in enumerate(kept) if not c.key]
    rest_cols = [kept[i] for i in rest]
    rest_cells = [[r[i] for i in rest] for r in cells]
    inner = _fit(rest_cols, rest_cells, limit - 2) if rest else []
    if inner is None:  # not even without the keys: one line per cell
        lines: list[str] = []
        for r in cells:
            lines += [r[i] for i in keys]
            lines += [_cut(f"  {kept[i].name}: {r[i]}", limit) for i in rest]
        return lines
    lines = [" / ".join(kept[i].name for i in keys)]
    if rest:
        lines.append("  " + _line(rest_cols, [c.name for c in rest_cols], inner))
    for full, r in zip(cells, rest_cells, strict=True):
        lines += [full[i] for i in keys]
        if rest:
            lines.append("  " + _line(rest_cols, r, inner))
    return lines


@dataclass(frozen=True)
class Listing:
    """How the user asked a listing to be shown."""

    wide: bool = False
    as_json: bool = False
    base_units: bool = False

    def money(self, base: int | None) -> str:
        return money(base, base_units=self.base_units)


def listing_options(*, amounts: bool = True) -> Callable[[F], F]:
    """``--wide``, ``--json`` and (with ``amounts``) ``--base-units``, passed on as one
    :class:`Listing` named ``listing``."""
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, wide: bool, as_json: bool, base_units: bool = False,
                    **kwargs: Any) -> Any:
            return func(*args, listing=Listing(wide, as_json, base_units), **kwargs)

        wrapped: Callable[..., Any] = wrapper
        if amounts:
            wrapped = click.option("--base-units", is_flag=True,
                                   help="Amounts in integer base units, not stablecoin.")(wrapped)
        wrapped = click.option("--json", "as_json", is_flag=True,
                               help="JSON (amounts in integer base units).")(wrapped)
        return click.option("--wide", is_flag=True,  # type: ignore[return-value]
                            help="Every column, in full, whatever the width.")(wrapped)
    return decorate


def emit(listing: Listing, cols: Sequence[Col], rows: Sequence[Sequence[str]],
         data: object, *, title: str | None = None, empty: str | None = None) -> None:
    """Print ``data`` as JSON with ``--json``, otherwise the title and the table."""
    if listing.as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if title:
        click.echo(title if listing.wide else _cut_title(title))
    if not rows and empty:
        click.echo(empty)
        return
    for line in render(cols, rows, wide=listing.wide):
        click.echo(line)


def say(text: str, *, wide: bool = False) -> None:
    """Print prose wrapped to the terminal's width; words (ids, URLs) are never split."""
    if wide:
        click.echo(text)
        return
    for line in textwrap.wrap(text, terminal_width(), break_long_words=False,
                              break_on_hyphens=False, subsequent_indent="  "):
        click.echo(line)


def _cut_title(title: str) -> str:
    limit = terminal_width()
    return "\n".join(line if len(line) <= limit else _cut(line, limit)
                     for line in title.splitlines())
