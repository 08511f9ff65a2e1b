"""``agoranet model``: build and inspect models."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["build_with_progress", "model"]

console = Console()


@click.group()
def model() -> None:
    """Build and inspect models."""


@model.command()
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if PATH already holds a model.")
@click.option("--size", type=click.Choice(["default", "small"]), default="default",
              show_default=True,
              help="small: fewer layers and steps, the same tokenizer and corpus (audit tests).")
def tiny(path: Path, steps: int | None, seed: int, force: bool, size: str) -> None:
    """Build the tiny default model (a small Llama) into PATH."""
    if (path / "config.json").exists() and not force:
        console.print(f"{path} already holds a model (use --force to rebuild)")
        return
    build_with_progress(path, steps, seed, console, size)


@model.command("tiny-embed")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if PATH already holds a model.")
def tiny_embed(path: Path, seed: int, force: bool) -> None:
    """Build a tiny embedding model (a small random BERT in the sentence-transformers
    layout, mean-pooled and normalised) into PATH: serve it with ``agoranet node --model
    PATH`` for ``/v1/embeddings``. Its vectors are deterministic but carry no meaning."""
    if (path / "modules.json").exists() and not force:
        console.print(f"{path} already holds a model (use --force to rebuild)")
        return
    from agoranet.tinymodel.embedding import build_tiny_embedding_model

    with console.status("building the tiny embedding model"):
        build_tiny_embedding_model(path, seed=seed)
    console.print(f"built the tiny embedding model in {path}")


def build_with_progress(path: Path, steps: int | None, seed: int, out: Console,
                        size: str = "default") -> None:
    """Build the tiny model (of a preset ``size``) with a progress bar, then print what was built."""
    import dataclasses

    from agoranet.tinymodel import SIZES, build_tiny_model

    spec = dataclasses.replace(SIZES[size], seed=seed)
    if steps is not None:
        spec = dataclasses.replace(spec, steps=steps)
    with Progress(
        TextColumn("training tiny model"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=out,
    ) as progress:
        task = progress.add_task("train", total=spec.steps, loss="-")

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, loss=f"{loss:.3f}")

        result = build_tiny_model(path, spec, report)
    table = Table(title="tiny model")
    table.add_column("path")
    table.add_column("parameters", justify="right")
    table.add_column("final loss", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row(str(result.path), f"{result.parameters:,}", f"{result.final_loss:.3f}",
                  f"{result.seconds:.1f}")
    out.print(table)
