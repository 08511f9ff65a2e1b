"""The ``agoranet`` command: one group, each sub-command a thin shell over the library."""

from __future__ import annotations

import logging
import sys

import click
from rich.console import Console
from rich.text import Text

from agoranet import __version__
from agoranet.cli.chain import chain
from agoranet.cli.demo import demo
from agoranet.cli.gateway import gateway, nodes, spend
from agoranet.cli.keys import keys
from agoranet.cli.mcp import mcp
from agoranet.cli.model import model
from agoranet.cli.node import node
from agoranet.cli.registry import registry
from agoranet.cli.reputation import reputation
from agoranet.cli.tools import tools
from agoranet.cli.tune import adapter, tune
from agoranet.cli.verify import verify
from agoranet.cli.wallet import wallet
from agoranet.errors import AgoranetError

__all__ = ["cli", "main"]

err_console = Console(stderr=True, soft_wrap=True)


@click.group()
@click.version_option(__version__, prog_name="agoranet")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """agoranet: an open market for AI inference."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


cli.add_command(node)
cli.add_command(model)
cli.add_command(demo)
cli.add_command(tune)
cli.add_command(adapter)
cli.add_command(gateway)
cli.add_command(nodes)
cli.add_command(spend)
cli.add_command(keys)
cli.add_command(mcp)
cli.add_command(registry)
cli.add_command(reputation)
cli.add_command(verify)
cli.add_command(chain)
cli.add_command(wallet)
cli.add_command(tools)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and a non-zero exit."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except AgoranetError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
