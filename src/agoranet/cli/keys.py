"""``agoranet keys``: the gateway's keys, from the key store it shares with the CLI.

Changes take effect on a running gateway at once: it reads the store at each request.
Amounts are typed and printed in stablecoin units (``2.50``) and stored as base units.
A new key's secret is printed once, by ``keys create`` (or ``keys rotate``), and never
again; the owner key's secret is only ever written to its file.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from pathlib import Path

import click
from rich.console import Console

from agoranet.cli.output import money
from agoranet.config import GatewaySettings
from agoranet.errors import ConfigError, RequestError
from agoranet.gateway.key_routes import key_json
from agoranet.gateway.keyaccess import check_key_policy
from agoranet.gateway.keysetup import ensure_owner, write_secret
from agoranet.gateway.keystore import OWNER, KeyRecord, KeyStore
from agoranet.payments.amounts import parse_amount

__all__ = ["keys", "parse_duration"]

console = Console(highlight=False)
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, option: str = "--expires") -> float:
    """``"7d"`` → seconds (s, m, h, d or w)."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None or int(found[1]) == 0:
        raise ConfigError(f"{option} {text!r}: give a duration like 30m, 12h, 7d or 2w")
    return int(found[1]) * _UNIT_S[found[2]]


def _store(path: Path | None) -> tuple[KeyStore, Path]:
    settings = GatewaySettings(key_store=path) if path else GatewaySettings()
    store = KeyStore(settings.key_store_path())
    owner = settings.owner_key_path()
    ensure_owner(store, owner)
    return store, owner


def _money(value: int | None) -> str:
    return money(value)  # 2.50, 0.125: never rounded


def _expiry(moment: float | None) -> str:
    if moment is None:
        return "never"
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


_COLUMNS = (("name", 12), ("parent", 10), ("budget", 8), ("spent", 8), ("reserved", 8),
            ("remaining", 9), ("expiry", 10), ("status", 7))


def table(rows: list[KeyRecord]) -> list[str]:
    """The keys as lines of at most 80 characters (names are cut, amounts never)."""
    def line(cells: list[str]) -> str:
        out = []
        for (name, width), cell in zip(_COLUMNS, cells, strict=True):
            if name in ("name", "parent"):
                cell = _cut(cell, width)
            out.append(cell.ljust(width) if name in ("name", "parent", "expiry", "status")
                       else cell.rjust(width))
        return " ".join(out).rstrip()

    lines = [line([name for name, _ in _COLUMNS])]
    for key in rows:
        lines.append(line([key.name, key.parent or "-", _money(key.budget), _money(key.spent),
                           _money(key.reserved), _money(key.remaining), _expiry(key.expires),
                           key.state()]))
    return lines


_store_option = click.option("--key-store", "key_store", default=None,
                             type=click.Path(dir_okay=False, path_type=Path),
                             help="The key store [default: the gateway's, under the home].")


@click.group()
def keys() -> None:
    """The gateway's keys: budgets for agents and their sub-agents."""


@keys.command()
@click.argument("name")
@click.option("--budget", required=True, help="Total it may spend, in stablecoin units (2.50).")
@click.option("--per-day", default=None, help="At most this much a day (UTC), stablecoin units.")
@click.option("--models", "models", multiple=True, metavar="GLOB",
              help="Models it may use, as glob patterns (repeatable) [default: its parent's].")
@click.option("--expires", default=None, help="Expires after this long: 30m, 12h, 7d, 2w.")
@click.option("--parent", default=OWNER, show_default=True, help="The key it is carved from.")
@click.option("--max-price-in", type=click.IntRange(min=0), default=None,
              help="Policy: highest input price, base units per million tokens.")
@click.option("--max-price-out", type=click.IntRange(min=0), default=None,
              help="Policy: highest output price, base units per million tokens.")
@click.option("--prefer", type=click.Choice(["cheapest", "fastest", "balanced"]), default=None,
              help="Policy: what to prefer among allowed nodes.")
@click.option("--tools", "tools", multiple=True, metavar="GLOB",
              help="Market tools it may call, as glob patterns (repeatable) [default: all].")
@click.option("--tool-seller", "tool_sellers", multiple=True, metavar="URL|ADDRESS",
              help="Tool sellers it may pay: root URL (a glob) or address (repeatable) "
                   "[default: all].")
@click.option("--max-tool-price", type=click.IntRange(min=0), default=None,
              help="The most one tool call may cost, base units.")
@_store_option
def create(name: str, budget: str, per_day: str | None, models: tuple[str, ...],
           expires: str | None, parent: str, max_price_in: int | None,
           max_price_out: int | None, prefer: str | None, tools: tuple[str, ...],
           tool_sellers: tuple[str, ...], max_tool_price: int | None,
           key_store: Path | None) -> None:
    """Create a key; its secret is printed once, here."""
    policy = {k: v for k, v in (("max_price_in", max_price_in), ("max_price_out", max_price_out),
                                ("prefer", prefer), ("tools", list(tools) or None),
                                ("tool_sellers", list(tool_sellers) or None),
                                ("max_tool_price", max_tool_price)) if v is not None}
    store, _ = _store(key_store)
    try:
        policy = check_key_policy(policy)  # the tool patterns' limits, as over the API
        new = store.create(
            name, parent=parent, budget=parse_amount(budget, allow_zero=True, what="--budget"),
            per_day=(parse_amount(per_day, allow_zero=True, what="--per-day")
                     if per_day is not None else None),
            models=list(models) or None, policy=policy,
            expires=time.time() + parse_duration(expires) if expires else None)
    except RequestError as exc:
        raise ConfigError(exc.message) from None
    finally:
        store.close()
    console.print(f"created key '{name}' under '{parent}' with {_money(new.record.budget)} "
                  "to spend; its secret (shown only now):")
    click.echo(new.secret)
    console.print("use it as OPENAI_API_KEY, with OPENAI_BASE_URL=http://127.0.0.1:8402/v1")


@keys.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_store_option
def list_keys(as_json: bool, key_store: Path | None) -> None:
    """Every key: budget, spent, reserved, remaining, expiry, status."""
    store, _ = _store(key_store)
    try:
        rows = store.subtree()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([key_json(k) for k in rows], indent=2))
        return
    for text in table(rows):
        click.echo(text)


@keys.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@_store_option
def show(name: str, as_json: bool, key_store: Path | None) -> None:
    """One key in full."""
    store, _ = _store(key_store)
    try:
        key = store.get(name)
    except RequestError as exc:
        raise ConfigError(exc.message) from None
    finally:
        store.close()
    data = key_json(key)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for field in ("budget", "per_day", "spent", "spent_today", "reserved", "remaining"):
        data[field] = _money(data[field])
    data["expires"] = _expiry(key.expires)
    for field, value in data.items():
        if field != "created":
            click.echo(f"{field:>12}: {value if value is not None else '-'}")


@keys.command()
@click.argument("name")
@_store_option
def revoke(name: str, key_store: Path | None) -> None:
    """Revoke a key and every key under it (a running gateway refuses their next request)."""
    store, _ = _store(key_store)
    try:
        if name == OWNER:
            raise ConfigError("the owner key cannot be revoked (delete its file to reissue it)")
        revoked = store.revoke(name)
    except RequestError as exc:
        raise ConfigError(exc.message) from None
    finally:
        store.close()
    console.print(f"revoked: {', '.join(revoked)}")


@keys.command()
@click.argument("name")
@click.option("--grace", default=None,
              help="Let the old secret work this much longer: 30s, 10m, 1h [default: it stops "
                   "at once, and so do older secrets still in their grace].")
@_store_option
def rotate(name: str, grace: str | None, key_store: Path | None) -> None:
    """A new secret for a key: same budget, spend and children; the old secret stops."""
    grace_s = parse_duration(grace, "--grace") if grace else 0.0
    store, owner = _store(key_store)
    try:
        new = store.rotate(name, grace_s=grace_s)
    except RequestError as exc:
        raise ConfigError(exc.message) from None
    finally:
        store.close()
    old = f"its old secret works for {grace} more" if grace else "its old secret no longer works"
    if name == OWNER:
        write_secret(owner, new.secret)
        console.print(f"rotated the owner key ({old}); its new secret is in {owner}")
        return
    console.print(f"rotated '{name}' (budget, spend and keys under it unchanged; {old}); "
                  "its new secret (shown only now):")
    click.echo(new.secret)


@keys.command(name="top-up")
@click.argument("name")
@click.argument("amount")
@_store_option
def top_up(name: str, amount: str, key_store: Path | None) -> None:
    """Raise a key's budget by AMOUNT (stablecoin units), within what its parents have left."""
    store, _ = _store(key_store)
    try:
        key = store.top_up(name, parse_amount(amount, what="the amount"))
    except RequestError as exc:
        raise ConfigError(exc.message) from None
    finally:
        store.close()
    console.print(f"'{name}' may now spend {_money(key.budget)} ({_money(key.remaining)} left)")
