"""A newcomer's first hour, run from the README (issue #15's walkthrough).

The commands are read from the README's "Your first hour" section and run in its
order as real ``agoranet`` (and ``curl``) subprocesses from an empty home: a dev
chain, a seller's wallet, funds, a paid node, its registration, a buyer's wallet and
gateway, a paid chat, the spend and the earnings, a claim. So a README that drifts
(a renamed flag, a wrong path, a step left out) fails here. Only the ports change:
each default port is swapped for a free one. The README's prose goes on: the chain
restarted without ``--state`` forgets everything; funding both wallets again and
restarting and registering the node is enough, while the gateway keeps running and
its next paid chat is answered. That part repeats the same README commands. (The
default chain URL moves with the chain's port through ``AGORANET_CHAIN_RPC_URL``.)

Assertions are on what a user sees: the addresses printed, the answer, the spend and
the earnings in decimal USDC agreeing with what the answer cost, the claim, and the
answer after the chain restart.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from agoranet.node.launcher import free_port
from helpers import ROOT, ensure_tiny_model, logged

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

SECTION = "## Your first hour: sell and buy on a dev chain"
BACKGROUND = "until Ctrl-C"
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


def readme_steps() -> list[str]:
    """The command lines of the section's ``sh`` blocks (comments kept: they mark steps)."""
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, "the README lost its walkthrough section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert blocks, "the walkthrough section has no sh block"
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@dataclass
class Walk:
    """The user's shell: the ``export``s so far, the ports, the processes left running."""

    home: Path
    ports: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    outputs: list[tuple[str, str]] = field(default_factory=list)

    def local(self, line: str) -> str:
        """``line`` on this test's free ports (and the tiny model wherever it was built)."""
        line = re.sub(r"\b(8545|8000|8402)\b", lambda m: str(self.ports[m[1]]), line)
        words = shlex.split(line.split("  #")[0])
        if words[:2] in (["agoranet", "chain"], ["agoranet", "gateway"]) and "--port" not in words:
            line = line.split("  #")[0].rstrip() + f" --port {self.ports[_DEFAULT[words[1]]]}"
        return line.replace("models/tiny", str(ensure_tiny_model()))

    def shell_env(self) -> dict[str, str]:
        path = f"{VENV_BIN}:{os.environ.get('PATH', '')}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("AGORANET_")}
        # The default RPC URL (port 8545) moves with the chain, as the flags' ports do.
        rpc = f"http://127.0.0.1:{self.ports['8545']}"
        return {**base, "HOME": str(self.home), "PATH": path, "OMP_NUM_THREADS": "1",
                "COLUMNS": "100", "AGORANET_CHAIN_RPC_URL": rpc, **self.env}

    def export(self, line: str) -> None:
        for word in shlex.split(line)[1:]:
            name, _, value = word.partition("=")
            self.env[name] = value.replace("~", str(self.home), 1) if value.startswith("~") \
                else value

    def run(self, line: str, timeout: float = 120) -> str:
        done = subprocess.run(["bash", "-c", self.local(line)], cwd=ROOT, env=self.shell_env(),
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        self.outputs.append((line, done.stdout))
        return done.stdout

    def start(self, line: str) -> None:
        name = shlex.split(line)[1]  # chain, node, gateway
        log = self.home / f"{name}-{len(self.logs)}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.running[name] = subprocess.Popen(
                ["bash", "-c", "exec " + self.local(line)], cwd=ROOT, env=self.shell_env(),
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not self._ready(name):
            assert self.running[name].poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{name} did not start:\n" + \
                log.read_text()[-3000:]
            time.sleep(0.3)

    def _ready(self, name: str) -> bool:
        if name == "chain":
            return "Ctrl-C to stop" in self.logs[name].read_text()
        try:
            port = self.ports[_DEFAULT[name]]
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def ctrl_c(self, name: str) -> str:
        """Stop a process as a user would (SIGINT); its output."""
        process = self.running.pop(name)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) is not None
        return self.logs[name].read_text()

    def stop_all(self) -> None:
        for process in self.running.values():
            process.send_signal(signal.SIGINT)
        for process in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


_DEFAULT = {"chain": "8545", "node": "8000", "gateway": "8402"}


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    ports = {default: free_port() for default in _DEFAULT.values()}
    started = Walk(home=tmp_path / "home", ports=ports)
    started.home.mkdir()
    try:
        yield started
    finally:
        started.stop_all()


def usdc(base_units: int) -> str:
    """How the CLI prints an amount: decimal USDC."""
    whole, _, fraction = f"{Decimal(base_units) / 1_000_000:.6f}".partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def _row(table: str, first: str) -> list[str]:
    """The cells after ``first`` of the table line that starts with it (on the next line
    when the key has a line of its own, as a whole id or address does in 80 columns)."""
    lines = table.splitlines()
    for at, line in enumerate(lines):
        if line.split()[:1] == [first]:
            return line.split()[1:] or (lines[at + 1].split() if at + 1 < len(lines) else [])
    raise AssertionError(f"no {first!r} row in\n{table}")


def _answer(output: str) -> tuple[str, int]:
    reply = json.loads(output)
    return reply["choices"][0]["message"]["content"], int(reply["agoranet"]["amount"])


def test_a_newcomer_sells_and_buys_from_the_readme(walk: Walk) -> None:
    steps = readme_steps()
    addresses: dict[str, str] = {}
    amount = 0
    for line in steps:
        if line.startswith("export "):
            walk.export(line)
        elif BACKGROUND in line:
            walk.start(line)
        elif line.startswith("agoranet node claim"):
            walk.ctrl_c("node")  # "after Ctrl-C on the node"
            claimed = walk.run(line)
            assert f"claimed {usdc(amount)} on 1 channel" in claimed, claimed
        else:
            output = walk.run(line)
            if line.startswith("agoranet wallet new"):
                found = ADDRESS.findall(output)
                assert found, output
                addresses[walk.env["AGORANET_HOME"]] = found[0]
            elif line.startswith("curl"):
                text, amount = _answer(output)
                assert text and amount > 0, output
    seller, buyer = addresses.values()
    assert seller != buyer
    # What the user saw along the way: the node's banner named the seller's address;
    # the buyer's spend and the seller's earnings agree with what the answer cost.
    assert seller in walk.logs["node"].read_text()
    by_command = dict(walk.outputs)
    spend = by_command[next(s for s in steps if s.startswith("agoranet spend"))]
    node_url = f"http://127.0.0.1:{walk.ports['8000']}/v1"
    paid = _row(spend, node_url)  # requests, tokens, amount, backed by signed receipts
    assert paid[0] == "1" and paid[2:4] == [usdc(amount), usdc(amount)], spend
    earnings = [out for line, out in walk.outputs if line.startswith("agoranet node earnings")]
    assert len(earnings) == 2
    # total: requests, charged, claimed, unclaimed -- before the claim, then after it
    assert _row(earnings[0], "total")[:4] == ["1", usdc(amount), "0.00", usdc(amount)], \
        earnings[0]
    assert _row(earnings[1], "total")[:4] == ["1", usdc(amount), usdc(amount), "0.00"], \
        earnings[1]

    # The chain restarted without --state: fund both again, node up and registered again;
    # the gateway, still running, answers the next paid chat on a new channel.
    walk.ctrl_c("chain")
    walk.start(next(s for s in steps if s.startswith("agoranet chain")))
    seller_env, buyer_env = [s for s in steps if s.startswith("export ")][:2]
    fund = next(s for s in steps if s.startswith("agoranet wallet fund"))
    walk.export(seller_env)
    walk.run(fund)
    walk.start(next(s for s in steps if s.startswith("agoranet node ")))
    walk.run(next(s for s in steps if s.startswith("agoranet registry register")))
    walk.export(buyer_env)
    walk.run(fund)
    again = walk.run(next(s for s in steps if s.startswith("curl")))
    assert '"choices"' in again, again + "\n" + walk.logs["gateway"].read_text()[-6000:]
    text, second = _answer(again)
    assert text and second > 0, again
    total = walk.run(next(s for s in steps if s.startswith("agoranet spend")))
    assert _row(total, node_url)[0] == "2" and usdc(amount + second) in _row(total, node_url), \
        total
    logged(walk.logs["gateway"], lambda log: "retired" in log, "the old channel retired")
