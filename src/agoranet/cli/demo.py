"""``agoranet demo``: see the embedded default work end to end."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

__all__ = ["demo"]


@click.command()
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("models/tiny"), show_default=True,
              help="Where the tiny model is (built there if missing).")
def demo(model_dir: Path) -> None:
    """Serve the tiny model from a node and ask it questions with the openai client."""
    from agoranet.demo import run_demo

    run_demo(model_dir, Console())
