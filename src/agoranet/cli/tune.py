"""``agoranet tune`` and ``agoranet adapter``: personal LoRA adapters."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agoranet.cli.output import Col, Listing, emit, listing_options, money
from agoranet.errors import AdapterError
from agoranet.tuning.adapter import adapter_model_name, pack_adapter, read_adapter

__all__ = ["adapter", "tune"]

console = Console()


@click.command()
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base", default="models/tiny", show_default=True,
              help="Base model: a directory or a Hugging Face Hub id.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write the adapter to.")
@click.option("--rank", type=click.IntRange(1, 512), default=8, show_default=True)
@click.option("--alpha", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Default: by model size (5e-3 small, 1e-3 <1B, 2e-4 larger).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Default: 3 to 12, more for small data sets.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--held-out", type=click.FloatRange(0, 0.5), default=0.1, show_default=True,
              help="Share of examples kept out of training to report loss on.")
@click.option("--seed", type=int, default=0, show_default=True)
def tune(data: Path, base: str, out: Path, rank: int, alpha: int, learning_rate: float | None,
         epochs: int | None, batch_size: int, held_out: float, seed: int) -> None:
    """Train a LoRA adapter on chat-format JSONL (OpenAI's fine-tuning format)."""
    from agoranet.tuning.data import load_jsonl
    from agoranet.tuning.lora import TuneConfig, train_adapter

    examples, data_hash = load_jsonl(data)
    config = TuneConfig(rank=rank, alpha=alpha, learning_rate=learning_rate, epochs=epochs,
                        batch_size=batch_size, held_out=held_out, seed=seed)
    with Progress(TextColumn("training adapter"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("tune", total=None, loss="-")

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, loss=f"{loss:.3f}")

        result = train_adapter(examples, base, out, config, data_sha256=data_hash,
                               progress=report)
    console.print(f"adapter {result.adapter_id}", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("examples (train / held out)",
                  f"{result.train_examples} / {result.heldout_examples}")
    table.add_row("steps", str(result.steps))
    table.add_row("final training loss", f"{result.train_loss:.3f}")
    if result.heldout_before is not None and result.heldout_after is not None:
        table.add_row("held-out loss before → after",
                      f"{result.heldout_before:.3f} → {result.heldout_after:.3f}")
    table.add_row("seconds", f"{result.seconds:.1f}")
    table.add_row("serve it as", adapter_model_name(result.base_model, result.adapter_id))
    console.print(table)


@click.group()
def adapter() -> None:
    """Inspect, verify and upload LoRA adapters."""


@adapter.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@listing_options(amounts=False)
def show(directory: Path, listing: Listing) -> None:
    """Print an adapter's id (in full, on a line of its own) and manifest."""
    found = read_adapter(directory)
    name = adapter_model_name(found.manifest.base_model, found.id)
    manifest = found.manifest.model_dump(mode="json")
    if listing.as_json:
        click.echo(json.dumps({"id": found.id, "model": name, "manifest": manifest}, indent=2))
        return
    click.echo(f"adapter in {directory}\nid\n{found.id}\nserve it as\n{name}")
    emit(listing, (Col("field"), Col("value")),
         [[key, str(value)] for key, value in manifest.items()], None)


@adapter.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--id", "expected", default=None, help="The id the adapter must have.")
@click.option("--base", default=None, help="A base model directory it must have been trained on.")
def verify(directory: Path, expected: str | None, base: str | None) -> None:
    """Recompute an adapter's id and check it (and its base model) against expectations."""
    found = read_adapter(directory)
    if expected is not None and expected != found.id:
        raise AdapterError(f"adapter id is {found.id}, expected {expected}")
    if base is not None:
        from agoranet.engines.hf import resolve_model_dir
        from agoranet.engines.weights import hash_weights, weight_files, weights_id

        root, _ = resolve_model_dir(base)
        base_hash = weights_id(hash_weights(weight_files(root), root=root))
        if base_hash != found.manifest.base_model_sha256:
            raise AdapterError(
                f"adapter was trained on base {found.manifest.base_model_sha256}, "
                f"{base} is {base_hash}"
            )
    console.print(f"ok {found.id}")


_owner_key = click.option(
    "--owner-key", default=None, envvar="AGORANET_ADAPTER_OWNER_KEY",
    help="Your secret for this node's adapters: names you as their owner, lists them. "
         "Without it an upload prints a new one.")


def _refused(response: httpx.Response, what: str) -> AdapterError:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300]
    return AdapterError(f"node refused {what} ({response.status_code}): {message}")


@adapter.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--node", "node_url", required=True, help="The node's base URL (…/v1).")
@_owner_key
@click.option("--public", is_flag=True, help="Also list it in the node's /v1/models.")
@click.option("--private", is_flag=True, help="Serve it to its owners alone (your owner key, "
              "or the wallet that paid for the upload).")
@click.option("--rpc-url", default=None,
              help="A paid node: pay the upload on this chain from the wallet of --keystore.")
@click.option("--keystore", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The wallet that pays [default: ~/.agoranet/wallet/keystore.json].")
@click.option("--deposit", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Deposit of a new channel to the node, in base units.")
def upload(directory: Path, node_url: str, owner_key: str | None, public: bool, private: bool,
           rpc_url: str | None, keystore: Path | None, deposit: int) -> None:
    """Upload an adapter to a node (paid, on a paid node); prints the model name to use."""
    found = read_adapter(directory)
    headers = {"content-type": "application/x-tar"}
    if owner_key:
        headers["authorization"] = f"Bearer {owner_key}"
    params = {"id": found.id, "public": str(public).lower(), "private": str(private).lower()}
    archive = pack_adapter(directory)
    paid = None
    try:
        if rpc_url is not None:
            response, paid = _paid_upload(node_url, rpc_url, keystore, deposit, archive,
                                          params, headers)
        else:
            response = httpx.post(f"{node_url.rstrip('/')}/adapters", content=archive,
                                  params=params, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        raise AdapterError(f"cannot reach {node_url}: {exc}") from exc
    if response.status_code == 402 and rpc_url is None:
        quoted = (response.json().get("agoranet") or {}).get("amount")
        raise AdapterError(f"this node charges {money(int(quoted or 0))} USDC for the "
                           "upload: pay it from your wallet with --rpc-url and --keystore")
    if response.status_code != 201:
        raise _refused(response, "the adapter")
    click.echo(f"uploaded; use model\n{response.json()['model']}")
    if paid is not None:
        click.echo(f"paid {money(paid)} USDC (signed receipt checked)")
    token = response.json().get("owner_token")
    if token:
        click.echo(f"owner key (shown once; lists your adapters with --owner-key):\n{token}")


def _paid_upload(node_url: str, rpc_url: str, keystore: Path | None, deposit: int,
                 archive: bytes, params: dict[str, str],
                 headers: dict[str, str]) -> tuple[httpx.Response, int | None]:
    """Upload through a payer with a channel of the uploader's own (kept under
    ``~/.agoranet/adapters/channels``); the answer and what was paid."""
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.cli.wallet_common import unlock_wallet
    from agoranet.config import default_home
    from agoranet.payments.pay.adapter_uploads import upload_adapter
    from agoranet.payments.pay.payer import Payer

    account = unlock_wallet(keystore)
    w3 = connect(rpc_url)
    folder = default_home() / "adapters" / "channels" / \
        hashlib.sha256(node_url.encode()).hexdigest()[:16]
    payer = Payer(node_url, w3, resolve_addresses(int(w3.eth.chain_id)), account=account,
                  state_dir=folder, top_up=deposit)
    try:
        if payer.state is None:
            payer.open(deposit)
        else:
            payer.reconcile()
        done = upload_adapter(payer, archive, params=params, headers=headers)
    finally:
        payer.close()
    return done.response, done.receipt.amount if done.receipt is not None else None


@adapter.command("list")
@click.option("--node", "node_url", required=True, help="The node's base URL (…/v1).")
@_owner_key
@listing_options(amounts=False)
def list_adapters(node_url: str, owner_key: str | None, listing: Listing) -> None:
    """Your adapters on a node (those uploaded or trained with your owner key)."""
    if not owner_key:
        raise AdapterError("give --owner-key: a node lists only its owner's adapters")
    try:
        response = httpx.get(f"{node_url.rstrip('/')}/adapters", timeout=30,
                             headers={"authorization": f"Bearer {owner_key}"})
    except httpx.HTTPError as exc:
        raise AdapterError(f"cannot reach {node_url}: {exc}") from exc
    if response.status_code != 200:
        raise _refused(response, "the listing")
    data = response.json()
    emit(listing, (Col("model", key=True), Col("rank", right=True), Col("created", keep=True),
                   Col("base sha256", wide=True)),
         [[a["model"], str(a["rank"]), str(a["created"])[:16].replace("T", " "),
           str(a["base_model_sha256"])]
          for a in data["data"]], data, empty="no adapters of yours on this node")
