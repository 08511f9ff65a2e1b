"""``agoranet node``: serve an engine over the OpenAI API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from agoranet.config import NodeSettings
from agoranet.engines.registry import available_engines

if TYPE_CHECKING:
    from agoranet.tuning.jobs import JobManager
from agoranet.tuning.jobs import JobManager

__all__ = ["node"]

console = Console()


@click.group(invoke_without_command=True)
@click.option("--engine", type=click.Choice(available_engines()), default="transformers",
              show_default=True)
@click.option("--model", "model_ref", default=None,
              help="Model directory, Hub id or GGUF file [default: models/tiny]; "
                   "for --engine upstream, the upstream model to serve [default: all].")
@click.option("--served-model-name", default=None, help="Name clients use for the model.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--upstream-url", default=None, help="Base URL of an OpenAI-compatible server.")
@click.option("--upstream-api-key", envvar="AGORANET_UPSTREAM_API_KEY", default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--price-in", type=click.IntRange(min=0), default=0, show_default=True,
              help="Input price per million tokens, in stablecoin base units.")
@click.option("--price-out", type=click.IntRange(min=0), default=0, show_default=True,
              help="Output price per million tokens, in stablecoin base units.")
@click.option("--max-active", type=click.IntRange(min=1), default=8, show_default=True,
              help="Sequences generated at once.")
@click.option("--max-queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests that may wait; beyond that the node answers 429.")
@click.option("--adapters-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where uploaded LoRA adapters are kept [default: ~/.agoranet/node/adapters].")
@click.option("--max-adapters", type=click.IntRange(min=1), default=8, show_default=True,
              help="Adapters kept loaded at once (least recently used are unloaded).")
@click.option("--no-adapters", is_flag=True, help="Refuse adapter uploads.")
@click.option("--price-training", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fine-tuning price per million training tokens, in base units.")
@click.option("--no-fine-tuning", is_flag=True, help="Do not sell fine-tuning jobs.")
@click.pass_context
def node(ctx: click.Context, engine: str, model_ref: str | None, served_model_name: str | None,
         host: str, port: int, upstream_url: str | None, upstream_api_key: str | None,
         device: str, price_in: int, price_out: int, max_active: int, max_queue: int,
         adapters_dir: Path | None, max_adapters: int, no_adapters: bool, price_training: int,
         no_fine_tuning: bool) -> None:
    """Serve a model over the OpenAI API (and sell it, later)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = NodeSettings(
        engine=engine, model=model_ref, served_model_name=served_model_name, host=host,
        port=port, upstream_url=upstream_url, upstream_api_key=upstream_api_key, device=device,
        price_in=price_in, price_out=price_out, max_active=max_active, max_queue=max_queue,
        adapters_dir=adapters_dir, max_adapters=max_adapters, price_training=price_training,
        fine_tuning=not no_fine_tuning,
    )
    serve(settings, adapters=not no_adapters)


def serve(settings: NodeSettings, *, adapters: bool = True) -> None:
    import uvicorn

    from agoranet.engines.registry import create_engine
    from agoranet.node.app import create_app

    what = settings.model or settings.upstream_url or "the default model"
    with console.status(f"loading {what} with the {settings.engine} engine"):
        engine = create_engine(
            settings.engine,
            model=settings.model,
            served_model_name=settings.served_model_name,
            device=settings.device,
            dtype=settings.dtype,
            max_active=settings.max_active,
            max_queue=settings.max_queue,
            base_url=settings.upstream_url,
            api_key=settings.upstream_api_key,
            adapters_dir=settings.adapter_store() if adapters else None,
            max_adapters=settings.max_adapters,
        )
    table = Table(title=f"agoranet node on http://{settings.host}:{settings.port}/v1")
    for column in ("model", "context", "weights sha256", "price in / out (per 1M)"):
        table.add_column(column)
    for info in engine.models():
        table.add_row(info.name, str(info.context_length), (info.model_sha256 or "-")[:16],
                      f"{settings.price_in} / {settings.price_out}")
    console.print(table)
    app = create_app(engine, settings, _job_manager(engine, settings))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                timeout_graceful_shutdown=5)


def _job_manager(engine: object, settings: NodeSettings) -> JobManager | None:
    """Fine-tuning is sold by nodes whose engine holds a local transformers model."""
    from agoranet.engines.hf import TransformersEngine

    if not settings.fine_tuning or not isinstance(engine, TransformersEngine):
        return None
    from agoranet.tuning.jobs import JobManager, local_trainer

    loaded = engine.loaded
    return JobManager(
        loaded.info.name, settings.fine_tuning_store(), local_trainer(loaded.directory),
        price_per_million=settings.price_training,
        base_parameters=sum(p.numel() for p in loaded.model.parameters()),
    )
