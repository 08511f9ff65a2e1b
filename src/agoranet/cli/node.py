"""``agoranet node``: serve an engine over the OpenAI API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.text import Text

from agoranet.cli.claim_options import claim_options
from agoranet.cli.node_claim import claim
from agoranet.cli.output import Col, Listing, emit, listing_options, say, when
from agoranet.cli.user_options import user_set
from agoranet.cli.wallet_common import keystore_option, rpc_option, unlock_wallet
from agoranet.config import NodeSettings
from agoranet.engines.registry import available_engines
from agoranet.engines.toolparsers import tool_parser_names

if TYPE_CHECKING:
    from agoranet.cli.node_banner import PaidSetup
    from agoranet.node.hooks import NodeHooks
    from agoranet.payments.accept.pg_ledger import PgLedger
    from agoranet.tuning.jobs import JobManager
from agoranet.tuning.jobs import JobManager

__all__ = ["node", "node_settings", "serve"]

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
@click.option("--tool-call-parser", type=click.Choice(tool_parser_names()), default=None,
              help="The model's tool-call format, for tool_choice 'auto' [default: the one "
                   "its chat template teaches, if known].")
@click.option("--embedding-pooling", type=click.Choice(["mean", "last"]), default=None,
              help="transformers engine: also serve /v1/embeddings with this causal LM, its "
              "last layer pooled (mean over the tokens, or the last token) and normalised; "
              "needs --no-adapters. An embedding model (sentence-transformers layout) "
              "needs no option.")
@click.option("--price-in", type=click.IntRange(min=0), default=0, show_default=True,
              help="Input price per million tokens, in stablecoin base units (embeddings "
              "are charged their input tokens at this price).")
@click.option("--price-out", type=click.IntRange(min=0), default=0, show_default=True,
              help="Output price per million tokens, in stablecoin base units.")
@click.option("--price-commitments", type=click.IntRange(min=0), default=0, show_default=True,
              help="Surcharge per million tokens of a request that asks for commitments "
              "(TOPLOC-style proofs), in base units.")
@click.option("--max-active", type=click.IntRange(min=1), default=8, show_default=True,
              help="Sequences generated at once.")
@click.option("--max-queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests that may wait; beyond that the node answers 429.")
@click.option("--no-batching", is_flag=True,
              help="transformers engine: one sequence per forward pass, in turn, instead of "
              "all active sequences in one (continuous batching).")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True),
              default=0.85, show_default=True,
              help="vllm engine: the share of the GPU's memory vLLM may take.")
@click.option("--adapters-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where uploaded LoRA adapters are kept [default: ~/.agoranet/node/adapters].")
@click.option("--max-adapters", type=click.IntRange(min=1), default=8, show_default=True,
              help="Adapters kept loaded at once (least recently used are unloaded).")
@click.option("--no-adapters", is_flag=True, help="Refuse adapter uploads.")
@click.option("--price-adapter-storage", type=click.IntRange(min=0), default=10_000,
              show_default=True, help="A paid node's price of an adapter upload, per started "
              "megabyte (10^6 bytes), in base units (0: uploads are free).")
@click.option("--price-training", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fine-tuning price per million training tokens, in base units.")
@click.option("--no-fine-tuning", is_flag=True, help="Do not sell fine-tuning jobs.")
@click.option("--free", is_flag=True, help="Serve without payment, whatever the prices.")
@rpc_option
@keystore_option
@click.option("--ledger", "ledger", metavar="PATH|URL", default=None,
              help="The node's ledger: a SQLite file [default: ~/.agoranet/node/ledger.sqlite] "
              "or a PostgreSQL URL (postgresql://...), which replicas of the node share.")
@claim_options("requests")
@click.option("--chain-state-ttl", type=click.FloatRange(min=0), default=30.0,
              show_default=True, help="Seconds a channel's on-chain state is cached.")
@click.option("--chain-timeout", "chain_timeout_s", type=click.FloatRange(min=0, min_open=True,
              max=120), default=5.0, show_default=True,
              help="Seconds a chain call on a request's path may take (one try); channels "
              "already known are served from cached state while the chain does not answer.")
@click.option("--receipt-every", type=click.IntRange(min=0), default=16, show_default=True,
              help="Send a running receipt every N streamed tokens (0: only at the end); "
              "a stream that breaks is charged its last one.")
@click.option("--operator-secret-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The operator's secret for the dashboard at / (created, "
              "0600, on first start) [default: operator.secret beside the ledger].")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines as text or JSON (one line per request and "
              "per claim or settle transaction).")
@click.pass_context
def node(ctx: click.Context, /, **options: Any) -> None:
    """Serve a model over the OpenAI API, paid with x402 unless --free (or unpriced)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"ledger": options["ledger"]}
        return
    no_adapters = options.pop("no_adapters")
    settings = node_settings(ctx, options)
    serve(settings, adapters=not no_adapters)


def node_settings(ctx: click.Context, options: dict[str, Any]) -> NodeSettings:
    """The node's settings: the options the user gave over the ``AGORANET_NODE_*``
    environment over the defaults (an option's own default never hides the environment)."""
    from agoranet.payments.accept.ledger_url import is_postgres_url

    renamed = {"model_ref": "model", "ledger": "ledger_path"}
    values = {renamed.get(k, k): v for k, v in user_set(ctx, options).items()}
    if isinstance(values.get("ledger_path"), str) and is_postgres_url(values["ledger_path"]):
        values["ledger_url"] = values.pop("ledger_path")
    if "no_fine_tuning" in values:
        values["fine_tuning"] = not values.pop("no_fine_tuning")
    if "no_batching" in values:
        values["batching"] = not values.pop("no_batching")
    return NodeSettings(**values)


node.add_command(claim)


@node.command("earnings")
@click.option("--ledger", "ledger", metavar="PATH|URL", default=None,
              help="The node's ledger: a SQLite file [default: ~/.agoranet/node/ledger.sqlite] "
              "or a PostgreSQL URL.")
@listing_options()
@click.pass_context
def earnings(ctx: click.Context, ledger: str | None, listing: Listing) -> None:
    """Claimed, unclaimed and settled earnings per channel, from the node's ledger.

    Also shows what is claimed but not settled yet (a settle that failed is retried on
    its own) and the channels whose claim keeps failing (set aside and retried later).
    """
    from agoranet.errors import ConfigError
    from agoranet.node.payment_setup import ledger_path, open_ledger
    from agoranet.payments.accept.ledger_url import is_postgres_url, redact_url
    from agoranet.payments.accept.sqlite_ledger import SqliteLedger

    where = str(ledger or (ctx.obj or {}).get("ledger") or ledger_path(NodeSettings()))
    book: SqliteLedger | PgLedger
    if is_postgres_url(where):
        book = open_ledger(NodeSettings(ledger_url=where))  # type: ignore[assignment]
        path: Path | str = redact_url(where)
    else:
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"no ledger at {path}: has this node been paid yet?")
        book = SqliteLedger(path)
    try:
        rows = book.earnings()
        failing = book.claim_failures()
        txs, gas = book.gas_used()
    finally:
        book.close()
    names = ("requests", "charged", "claimed", "unclaimed", "settled", "to settle")
    cols = (Col("channel", key=True), Col("requests", right=True), Col("charged", right=True),
            Col("claimed", right=True), Col("unclaimed", right=True),
            Col("to settle", right=True), Col("settled", right=True, wide=True),
            Col("payer", wide=True), Col("claim", wide=True))
    table, data = [], []
    totals = [0, 0, 0, 0, 0, 0]
    for r in rows:
        values = [r.requests, r.charged, r.claimed, r.unclaimed, r.settled, r.pending_settle]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        data.append({"channel": r.channel_id, "payer": r.payer,
                     "claim_failures": r.claim_failures,
                     **dict(zip(names, values, strict=True))})
        table.append([r.channel_id, str(r.requests), *(listing.money(v) for v in values[1:4]),
                      listing.money(values[5]), listing.money(values[4]), r.payer,
                      "failing" if r.claim_failures else "ok"])
    table.append(["total", str(totals[0]), *(listing.money(v) for v in totals[1:4]),
                  listing.money(totals[5]), listing.money(totals[4]), "", ""])
    if listing.as_json:
        click.echo(json.dumps({
            "ledger": str(path), "channels": data,
            "total": dict(zip(names, totals, strict=True)),
            "claim_failures": [{"channel": f.channel_id, "failures": f.failures,
                                "first_failed_at": f.first_failed_at, "retry_at": f.retry_at,
                                "last_error": f.last_error} for f in failing],
            "transactions": txs, "gas": gas}, indent=2))
        return
    emit(listing, cols, table, None, title=f"earnings in {path}")
    if totals[5]:
        say(f"{listing.money(totals[5])} claimed on chain but not settled to the node "
            "yet: the node retries the settle on its own", wide=listing.wide)
    for f in failing:
        say(f"claim failing on channel {f.channel_id}: {f.failures} time(s) in a row "
            f"since {when(f.first_failed_at)}, next try after {when(f.retry_at)}: "
            f"{f.last_error}", wide=listing.wide)
    click.echo(f"{txs} claim/settle transactions, {gas} gas")


def serve(settings: NodeSettings, *, adapters: bool = True, hooks: NodeHooks | None = None
          ) -> None:
    """Check everything that can fail fast (port, model directory, wallet, chain, gas,
    ledger), then load the model, print the banner and serve. ``hooks`` compose the
    node otherwise (test-only wrappers: ``python -m agoranet.testing node``)."""
    from agoranet.api import server
    from agoranet.api.logformat import configure_logging
    from agoranet.api.secret_gate import load_or_create_secret
    from agoranet.cli.engine_options import check_engine_options
    from agoranet.cli.node_banner import node_banner
    from agoranet.cli.preflight import check_model_dir, check_port_free
    from agoranet.node.app import create_app
    from agoranet.node.hooks import NodeHooks

    hooks = hooks or NodeHooks()

    configure_logging(settings.log_format)
    check_engine_options(settings)
    check_port_free(settings.host, settings.port, "node or server")
    if settings.engine == "transformers":
        check_model_dir(settings.model)
    if settings.engine == "vllm":  # the extra and a GPU, before the wallet and the chain
        from agoranet.engines.vllm import require_vllm

        require_vllm(settings.device)
    paid = _paid_setup(settings, hooks) if settings.paid else None
    what = settings.model or settings.upstream_url or "the default model"
    with console.status(f"loading {what} with the {settings.engine} engine"):
        engine = hooks.engine(
            settings.engine,
            model=settings.model,
            served_model_name=settings.served_model_name,
            device=settings.device,
            dtype=settings.dtype,
            max_active=settings.max_active,
            max_queue=settings.max_queue,
            batching=settings.batching,
            base_url=settings.upstream_url,
            api_key=settings.upstream_api_key,
            adapters_dir=settings.adapter_store() if adapters else None,
            max_adapters=settings.max_adapters,
            tool_call_parser=settings.tool_call_parser,
            embedding_pooling=settings.embedding_pooling,
            gpu_memory_utilization=settings.gpu_memory_utilization,
        )
    node_banner(console, settings, engine.models(), paid)
    payments = paid.payments if paid is not None else None
    jobs = _job_manager(engine, settings)
    operator_secret = load_or_create_secret(settings.operator_secret_path())
    app = create_app(engine, settings, jobs, payments, hooks.middleware,
                     operator_secret=operator_secret)
    _mount_dashboard(app, settings, engine, jobs, payments, operator_secret)
    server.serve(app, settings.host, settings.port, server.ServerLimits(
        settings.header_timeout_s, settings.keep_alive_s, settings.max_connections),
        settings.http_protocol)


def _mount_dashboard(app: Any, settings: NodeSettings, engine: Any, jobs: JobManager | None,
                     payments: Any, secret: str) -> None:
    """The operator's dashboard at ``/`` behind the operator secret (its file is said)."""
    from agoranet.dashboard import NodeView, mount_node_dashboard
    from agoranet.node.payment_setup import ledger_path

    view = NodeView(engine, jobs=jobs, payments=payments,
                    ledger_file=None if settings.ledger_url else ledger_path(settings),
                    settings={"price_in": settings.price_in, "price_out": settings.price_out})
    view.start_sampling()
    mount_node_dashboard(app, view, secret)
    console.print(f"dashboard: http://{settings.host}:{settings.port}/ (operator secret in "
                  f"{settings.operator_secret_path()})")


def _paid_setup(settings: NodeSettings, hooks: NodeHooks) -> PaidSetup:
    """A paid node's wallet, chain, gas and ledger, checked before the model loads."""
    from agoranet.cli.node_banner import CLAIM_GAS, PaidSetup, no_gas_warning
    from agoranet.cli.preflight import (
        connect_chain_or_hint,
        gas_cost,
        hold_ledger,
        native_balance,
    )
    from agoranet.errors import ConfigError
    from agoranet.node.payment_setup import build_payments, ledger_path, open_ledger
    from agoranet.payments.accept.ledger_url import redact_url

    account = unlock_wallet(settings.keystore)
    if settings.ledger_url is not None:  # shared by replicas: PostgreSQL locks per channel
        if hooks.open_ledger is not None:
            raise ConfigError("this node's ledger hook works on a SQLite ledger only")
        shared = open_ledger(settings)  # psycopg there, the server reachable: checked first
        try:
            w3 = connect_chain_or_hint(settings.rpc_url)
            gas, gas_needed = native_balance(w3, account.address), gas_cost(w3, CLAIM_GAS)
            if gas < gas_needed:
                console.print(Text(no_gas_warning(account.address, gas), style="bold yellow"))
            payments = build_payments(settings, account, ledger=shared)
        except BaseException:
            shared.close()
            raise
        return PaidSetup(payments, gas, gas_needed, redact_url(settings.ledger_url), None)
    w3 = connect_chain_or_hint(settings.rpc_url)
    gas, gas_needed = native_balance(w3, account.address), gas_cost(w3, CLAIM_GAS)
    if gas < gas_needed:  # it can serve, but not claim: say so before the model loads
        console.print(Text(no_gas_warning(account.address, gas), style="bold yellow"))
    lock = hold_ledger(ledger_path(settings))
    ledger = hooks.open_ledger(ledger_path(settings)) if hooks.open_ledger is not None else None
    payments = build_payments(settings, account, ledger=ledger)
    return PaidSetup(payments, gas, gas_needed, ledger_path(settings), lock)


def _job_manager(engine: object, settings: NodeSettings) -> JobManager | None:
    """Fine-tuning is sold by nodes whose engine holds a local transformers model."""
    from agoranet.engines.hf import TransformersEngine

    if not settings.fine_tuning or not isinstance(engine, TransformersEngine):
        return None
    from agoranet.tuning.jobs import JobManager, local_trainer
    from agoranet.tuning.sizing import local_sizer

    loaded = engine.loaded
    return JobManager(
        loaded.info.name, settings.fine_tuning_store(), local_trainer(loaded.directory),
        local_sizer(loaded.directory, loaded.info.context_length),
        price_per_million=settings.price_training,
        base_parameters=sum(p.numel() for p in loaded.model.parameters()),
    )
