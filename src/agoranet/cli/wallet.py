"""``agoranet wallet``: a key in an encrypted keystore, its money and its channels.

The private key never appears in output or logs: ``export`` writes it (or the
keystore) to a new file with mode 0600, and only after an explicit flag and a
confirmation.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from agoranet.cli.output import Col, Listing, emit, listing_options, money, say, when
from agoranet.cli.subkey import subkey
from agoranet.cli.wallet_common import (
    amount_option,
    connect_chain,
    console,
    keystore_option,
    keystore_path,
    read_password,
    rpc_option,
)

__all__ = ["wallet"]


@click.group()
def wallet() -> None:
    """Your key (encrypted keystore), balances, channels and budgeted sub-keys."""


wallet.add_command(subkey)


@wallet.command("new")
@keystore_option
def new(keystore: Path | None) -> None:
    """Create a new key in an encrypted keystore (password: prompt or AGORANET_WALLET_PASSWORD)."""
    from agoranet.errors import WalletError
    from agoranet.payments.wallet import create_keystore

    path = keystore_path(keystore)
    if path.exists():
        raise WalletError(f"{path} already exists; not overwriting it (use --keystore PATH)")
    address = create_keystore(path, read_password(confirm=True))
    console.print(f"address   {address}\nkeystore  {path}")


@wallet.command("show")
@keystore_option
def show(keystore: Path | None) -> None:
    """Show the wallet's address and keystore file (no password needed)."""
    from agoranet.payments.wallet import keystore_address

    path = keystore_path(keystore)
    console.print(f"address   {keystore_address(path)}\nkeystore  {path}")


@wallet.command("fund")
@click.argument("amount", default="1000")
@amount_option
@click.option("--native", "native_text", default="1", show_default=True,
              help="Native coin (ETH) to send for gas, in ETH.")
@click.option("--to", "to_text", default=None, help="Fund this address instead of the wallet.")
@keystore_option
@rpc_option
def fund(amount: str, base_units: bool, native_text: str, to_text: str | None,
         keystore: Path | None, rpc_url: str) -> None:
    """Mint AMOUNT test stablecoin (default 1000) and send ETH: dev chain (31337) only."""
    from agoranet.payments.amounts import (
        NATIVE_DECIMALS,
        format_amount,
        parse_address,
        parse_amount,
    )
    from agoranet.payments.wallet import fund_dev, keystore_address

    coin = parse_amount(amount, base_units=base_units, allow_zero=True)
    native = parse_amount(native_text, decimals=NATIVE_DECIMALS, allow_zero=True, what="--native")
    to = parse_address(to_text, what="--to") if to_text else keystore_address(keystore_path(keystore))
    w3, addresses = connect_chain(rpc_url)
    fund_dev(w3, addresses, to, stablecoin=coin, native=native)
    console.print(f"funded {to}: +{coin} base units ({format_amount(coin)} stablecoin), "
                  f"+{format_amount(native, NATIVE_DECIMALS)} ETH")


@wallet.command("balance")
@click.option("--address", "address_text", default=None, help="Any address instead of the wallet.")
@keystore_option
@rpc_option
@listing_options()
def balance(address_text: str | None, keystore: Path | None, rpc_url: str,
            listing: Listing) -> None:
    """Native and stablecoin balances (decimal; --base-units for base units)."""
    from agoranet.payments.amounts import NATIVE_DECIMALS, parse_address
    from agoranet.payments.wallet import balances, keystore_address

    address = (parse_address(address_text, what="--address") if address_text
               else keystore_address(keystore_path(keystore)))
    w3, addresses = connect_chain(rpc_url)
    found = balances(w3, addresses, address)
    title = f"{address} on chain {addresses.chain_id}"
    if addresses.stablecoin is not None:
        title += f"\nstablecoin {addresses.stablecoin}"
    cols = (Col("asset"), Col("amount", right=True))
    rows = [["ETH", money(found.native, base_units=listing.base_units,
                          decimals=NATIVE_DECIMALS)]]
    if found.stablecoin is None:
        rows.append(["stablecoin", "- (no stablecoin known for this chain)"])
    else:
        rows.append(["stablecoin", money(found.stablecoin, base_units=listing.base_units,
                                         decimals=addresses.token_decimals)])
    emit(listing, cols, rows, {"address": address, "chain_id": addresses.chain_id,
                               "stablecoin_contract": addresses.stablecoin,
                               "native": found.native, "stablecoin": found.stablecoin,
                               "stablecoin_decimals": addresses.token_decimals},
         title=title)


@wallet.command("channels")
@click.option("--from-block", type=click.IntRange(min=0), default=0, show_default=True,
              help="First block to scan for the escrow's ChannelCreated events.")
@keystore_option
@rpc_option
@listing_options()
def channels(from_block: int, keystore: Path | None, rpc_url: str, listing: Listing) -> None:
    """List the wallet's batch-settlement channels on the escrow."""
    from agoranet.payments.channels import find_channels
    from agoranet.payments.wallet import keystore_address

    payer = keystore_address(keystore_path(keystore))
    w3, addresses = connect_chain(rpc_url)
    found = find_channels(w3, addresses, payer, from_block=from_block)
    total = sum(ch.available for ch in found)
    if listing.as_json:
        click.echo(json.dumps({"payer": payer, "chain_id": addresses.chain_id, "channels": [
            {"channel": ch.channel_id, "receiver": ch.config.receiver,
             "subkey": ch.config.payer_authorizer if ch.has_subkey else None,
             "balance": ch.balance, "claimed": ch.total_claimed, "available": ch.available,
             "withdraw_amount": ch.withdraw_amount if ch.finalize_after is not None else None,
             "finalize_after": ch.finalize_after} for ch in found],
            "available": total}, indent=2))
        return
    if not found:
        click.echo(f"no channels paid by {payer} on chain {addresses.chain_id}")
        return
    say(f"channels paid by {payer} on chain {addresses.chain_id}:")
    for ch in found:
        pending = "-"
        if ch.finalize_after is not None:
            pending = f"{listing.money(ch.withdraw_amount)} after {when(ch.finalize_after)}"
        click.echo(
            f"{ch.channel_id}\n"
            f"  receiver    {ch.config.receiver}\n"
            f"  sub-key     {ch.config.payer_authorizer if ch.has_subkey else '-'}\n"
            f"  balance     {listing.money(ch.balance)}\n"
            f"  claimed     {listing.money(ch.total_claimed)}\n"
            f"  available   {listing.money(ch.available)}\n"
            f"  withdrawal  {pending}"
        )
    say(f"{len(found)} channel(s); available in escrow: {listing.money(total)}")


@wallet.command("export")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="New file to write (mode 0600); never overwritten.")
@click.option("--private-key", "private_key", is_flag=True,
              help="Write the raw private key instead of the encrypted keystore.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation of --private-key.")
@keystore_option
def export(out: Path, private_key: bool, yes: bool, keystore: Path | None) -> None:
    """Write the keystore JSON (or, with --private-key, the raw key) to a new 0600 file."""
    from agoranet.errors import WalletError
    from agoranet.payments.wallet import keystore_address, unlock, write_private

    path = keystore_path(keystore)
    address = keystore_address(path)
    if out.exists():
        raise WalletError(f"{out} already exists; not overwriting it")
    if not private_key:
        write_private(out, path.read_text(encoding="utf-8"))
        console.print(f"keystore of {address} written to {out}")
        return
    account = unlock(path, read_password())
    if not yes and not click.confirm(
        f"Write the UNENCRYPTED private key of {address} to {out}?", default=False
    ):
        raise click.Abort()
    write_private(out, "0x" + bytes(account.key).hex() + "\n")
    console.print(f"private key of {address} written to {out} (mode 0600); keep it secret")

