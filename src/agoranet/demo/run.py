"""The demo's steps: a paid network with a gateway, an agent's key and its sub-agent's
budget on that gateway, agents trading (a buyer agent pays a tool that pays a node), then
a personal adapter."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from agoranet.demo.adapter_step import adapter_step
from agoranet.demo.keys_step import keys_step
from agoranet.demo.network_step import DemoMarket, DemoNetwork, dashboard_lines, network_step
from agoranet.demo.trade_step import trade_step
from agoranet.errors import ConfigError
from agoranet.node.launcher import running_node

__all__ = ["run_demo", "show_dashboards"]


def _ensure_model(path: Path, console: Console) -> None:
    if (path / "model.safetensors").exists():
        return
    from agoranet.cli.model import build_with_progress

    console.print(f"building the tiny model into {path} (about a minute, once)")
    build_with_progress(path, None, 0, console)


def run_demo(model_dir: Path, console: Console, work_dir: Path | None = None) -> None:
    """The network end to end, then a personal fine-tune; every process is stopped after."""
    try:
        import openai  # noqa: F401
    except ImportError as exc:
        raise ConfigError("the demo needs the openai client: pip install openai") from exc
    _ensure_model(model_dir, console)
    work = work_dir or model_dir.parent / "demo"
    started = time.perf_counter()
    def agents(gateway: str, owner_key: str, key_store: Path) -> None:
        console.rule("2. agents: a key hands a sub-agent a budget; the sub-agent works to its cap")
        keys_step(gateway, owner_key, key_store, console)

    def agents_trade(market: DemoMarket) -> None:
        console.rule("3. agents trade: a buyer agent pays a tool that pays a node")
        trade_step(market, console)

    def fine_tune_and_look(network: DemoNetwork) -> None:
        console.rule("4. a personal fine-tune: train a LoRA adapter, upload it, use it")
        with ExitStack() as stack:
            with console.status("starting a node that takes adapters"):
                base_url = stack.enter_context(running_node([
                    "--model", str(model_dir), "--served-model-name", "tiny",
                    "--adapters-dir", str(work / "node-adapters"), "--no-fine-tuning",
                ]))
            adapter_step(base_url, model_dir, work, console)
        show_dashboards(network, console)

    console.rule("1. the network: a dev chain, four paid nodes, a gateway that pays")
    network_step(model_dir, work, console, agents, fine_tune_and_look, agents_trade)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s; every process stopped")


def show_dashboards(network: DemoNetwork, console: Console) -> None:
    """Print the dashboards' URLs (dev-chain secrets included) and, in a terminal, keep the
    network up until Enter; without one (CI) never wait."""
    console.rule("the dashboards (open them in a browser; log in with the secret shown)")
    for line in dashboard_lines(network):
        console.print(line, highlight=False, soft_wrap=True)
    if sys.stdin.isatty():
        console.input("[bold]press Enter to stop the network[/] ")
