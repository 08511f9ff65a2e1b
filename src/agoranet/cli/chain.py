"""``agoranet chain``: run the local dev chain, or show a chain's contract addresses."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType

import click
from rich.console import Console
from rich.table import Table

__all__ = ["chain"]

console = Console(soft_wrap=True)


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8545, show_default=True)
@click.option("--chain-id", type=click.IntRange(min=1), default=31337, show_default=True)
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Load the chain from FILE if it exists, save it there on exit.")
@click.option("--accounts", type=click.IntRange(1, 100), default=10, show_default=True,
              help="Dev accounts (each funded with ETH and test stablecoin).")
@click.option("--from-source", is_flag=True,
              help="Compile the contracts from their Vyper sources instead of installing the "
                   "shipped artefacts (contract development; needs the vyper package).")
@click.pass_context
def chain(ctx: click.Context, host: str, port: int, chain_id: int, state_file: Path | None,
          accounts: int, from_source: bool) -> None:
    """Run the local dev chain (anvil with agoranet's contracts) until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from agoranet.chain.devchain import start_devchain
    from agoranet.cli.preflight import check_port_free
    from agoranet.errors import DevChainError

    check_port_free(host, port, "chain")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Handlers first: a signal during start-up still ends in a clean stop of anvil.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        started = time.monotonic()
        dev = start_devchain(host=host, port=port, chain_id=chain_id, state_file=state_file,
                             accounts=accounts, from_source=from_source)
        elapsed = time.monotonic() - started
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    try:
        table = Table(title=f"agoranet dev chain (started in {elapsed:.1f} s)", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("RPC URL", dev.rpc_url)
        table.add_row("chain id", str(dev.chain_id))
        for name in ("stablecoin", "escrow", "collector", "registry", "multicall"):
            table.add_row(name, str(getattr(dev, name)))
        console.print(table)
        console.print(f"state file: {dev.state_file or '- (not saved)'}", highlight=False)
        shown = min(3, len(dev.accounts))
        console.print(f"dev accounts (first {shown} of {len(dev.accounts)}; keys from the "
                      "public test mnemonic, never use them elsewhere):")
        for i in range(shown):
            console.print(f"  [{i}] {dev.accounts[i]}")
        console.print(f"RPC URL: {dev.rpc_url}   (Ctrl-C to stop)", highlight=False)
        console.file.flush()
        while not stop.wait(0.5):
            proc = dev.process
            if proc is None or proc.poll() is not None:
                raise DevChainError("anvil exited unexpectedly")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        dev.stop()
    saved = f"; state saved to {dev.state_file}" if dev.state_file else ""
    console.print(f"dev chain stopped{saved}", highlight=False)


@chain.command("addresses")
@click.option("--rpc-url", envvar="AGORANET_CHAIN_RPC_URL", default="http://127.0.0.1:8545",
              show_default=True, help="JSON-RPC URL of the chain (env AGORANET_CHAIN_RPC_URL).")
def addresses(rpc_url: str) -> None:
    """Show the contract addresses agoranet uses on the chain at RPC_URL."""
    from web3 import Web3
    from web3.exceptions import Web3Exception

    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.config import ChainSettings
    from agoranet.errors import ChainError

    w3 = connect(rpc_url)
    chain_id = int(w3.eth.chain_id)
    resolved = resolve_addresses(chain_id, ChainSettings(rpc_url=rpc_url))
    table = Table(title=f"chain {chain_id} at {rpc_url}")
    table.add_column("contract")
    table.add_column("address")
    table.add_column("code")
    unset = []
    for name, address in resolved.rows():
        if address == "-":
            table.add_row(name, "-", "-")
            unset.append(f"AGORANET_CHAIN_{name.upper()}")
            continue
        try:
            has_code = w3.eth.get_code(Web3.to_checksum_address(address)) != b""
        except (OSError, ValueError, Web3Exception) as exc:
            raise ChainError(f"cannot read code at {address}: {exc}") from exc
        table.add_row(name, address, "yes" if has_code else "[red]none[/red]")
    console.print(table)
    if unset:
        console.print(f"none known on chain {chain_id}; set {' / '.join(unset)} to use one",
                      highlight=False)
