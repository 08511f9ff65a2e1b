"""``agoranet wallet subkey``: budgeted keys for agents, and their revocation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from agoranet.cli.output import money
from agoranet.cli.wallet_common import (
    amount_option,
    connect_chain,
    console,
    keystore_option,
    rpc_option,
    unlock_wallet,
)

__all__ = ["subkey"]


@click.group()
def subkey() -> None:
    """Keys that can spend at most their channel's deposit (for agents)."""


@subkey.command("new")
@click.option("--deposit", "deposit_text", required=True,
              help="Budget in USDC (e.g. 12.5), or base units with --base-units.")
@amount_option
@click.option("--receiver", "receiver_text", required=True, help="Who the sub-key may pay.")
@click.option("--receiver-authorizer", "authorizer_text", default=None,
              help="Address that co-signs claims for the receiver [default: the receiver].")
@click.option("--withdraw-delay", type=click.IntRange(900, 2_592_000), default=900,
              show_default=True, help="Seconds between starting and finishing a revoke.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sub-key file to create (mode 0600) [default: ~/.agoranet/wallet/subkeys/].")
@keystore_option
@rpc_option
def new(deposit_text: str, base_units: bool, receiver_text: str, authorizer_text: str | None,
        withdraw_delay: int, out: Path | None, keystore: Path | None, rpc_url: str) -> None:
    """Open a channel whose vouchers only a fresh key signs, and write that key to a file."""
    from agoranet.config import default_home
    from agoranet.errors import WalletError
    from agoranet.payments.amounts import format_amount, parse_address, parse_amount
    from agoranet.payments.pay.subkeys import create_subkey, write_subkey

    deposit = parse_amount(deposit_text, base_units=base_units, what="--deposit")
    receiver = parse_address(receiver_text, what="--receiver")
    authorizer = parse_address(authorizer_text, what="--receiver-authorizer") if authorizer_text \
        else None
    if out is not None and out.exists():
        raise WalletError(f"{out} already exists; not overwriting it")
    w3, addresses = connect_chain(rpc_url)
    payer = unlock_wallet(keystore)
    created, tx = create_subkey(w3, addresses, payer, receiver=receiver, deposit=deposit,
                                receiver_authorizer=authorizer, withdraw_delay=withdraw_delay)
    path = out or default_home() / "wallet" / "subkeys" / f"{created.channel_id[:18]}.json"
    write_subkey(path, created)
    console.print(f"sub-key   {created.address}\nchannel   {created.channel_id}\n"
                  f"deposit   {deposit} base units ({format_amount(deposit)})\n"
                  f"receiver  {receiver}\nfile      {path} (mode 0600)\n"
                  f"opened in {tx.tx_hash} (gas {tx.gas_used})")


@subkey.command("revoke")
@click.argument("target")
@click.option("--wait", is_flag=True,
              help="Dev chain (31337) only: advance the chain's clock past the withdraw delay "
                   "and finish at once.")
@click.option("--from-block", type=click.IntRange(min=0), default=0, show_default=True,
              help="First block to scan when TARGET is a channel id.")
@keystore_option
@rpc_option
def revoke(target: str, wait: bool, from_block: int, keystore: Path | None, rpc_url: str) -> None:
    """Take back what is left on a sub-key's channel (TARGET: sub-key file or channel id).

    Starts the escrow's timed withdrawal; run it again after the withdraw delay
    to finish (or use --wait on the dev chain).
    """
    from agoranet.chain.rpc import DEV_CHAIN_ID
    from agoranet.errors import ConfigError, WalletError
    from agoranet.payments.channels import find_channel
    from agoranet.payments.pay.subkeys import read_subkey
    from agoranet.payments.pay.subkeys import revoke as revoke_channel

    w3, addresses = connect_chain(rpc_url)
    if wait and addresses.chain_id != DEV_CHAIN_ID:
        raise ConfigError(f"--wait only works on the dev chain (31337), not chain "
                          f"{addresses.chain_id}")
    path = Path(target)
    if path.is_file():
        sk = read_subkey(path)
        if sk.chain_id != addresses.chain_id:
            raise WalletError(f"{path} is for chain {sk.chain_id}, the RPC URL serves chain "
                              f"{addresses.chain_id}")
        config = sk.config
    elif target.startswith("0x"):
        config = find_channel(w3, addresses, target, from_block=from_block).config
    else:
        raise ConfigError(f"{target!r} is neither a sub-key file nor a channel id")
    payer = unlock_wallet(keystore)
    outcome = revoke_channel(w3, addresses, payer, config, advance_time=wait)
    gas = sum(t.gas_used for t in outcome.transactions)
    if outcome.state == "nothing-left":
        console.print(f"nothing left on channel {outcome.channel.channel_id}; the sub-key "
                      "can no longer be paid out")
    elif outcome.state == "pending":
        assert outcome.finalize_after is not None
        when = datetime.fromtimestamp(outcome.finalize_after, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        console.print(f"withdrawal of {money(outcome.channel.withdraw_amount)} started "
                      f"(gas {gas}); run revoke again after {when} (chain time) to finish. "
                      "Until then the receiver can still claim signed vouchers.")
    else:
        console.print(f"revoked: {money(outcome.returned)} returned to {payer.address} "
                      f"(gas {gas}); claimed by the receiver: "
                      f"{money(outcome.channel.total_claimed)}")
