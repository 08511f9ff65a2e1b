"""``agoranet chain``: a real subprocess that keeps balances and channels across restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import assert_one_line_error, run_inprocess, run_subprocess
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import STABLECOIN_ADDRESS, DevChain, start_devchain
from agoranet.chain.rpc import connect
from agoranet.payments.channels import find_channels
from agoranet.payments.wallet import balances, keystore_address
from payments.support import ANVIL_MISSING, PASSWORD, fast_keystore, needs_anvil

RECEIVER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(port: int, state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agoranet", "chain", "--port", str(port), "--state", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _wait_ready(url: str, proc: subprocess.Popen[str]) -> tuple[float, str]:
    """Read stdout up to the final "RPC URL:" line (printed once start-up is over)."""
    started, seen = time.monotonic(), []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"RPC URL: {url}"):
            assert connect(url).eth.get_code(STABLECOIN_ADDRESS) != b""
            return time.monotonic() - started, "".join(seen)
    raise AssertionError(f"agoranet chain exited: {''.join(seen)} {proc.communicate()}")


def _stop(proc: subprocess.Popen[str], sig: signal.Signals, group: bool) -> tuple[str, str]:
    try:
        if group:  # what Ctrl-C in a terminal does: the signal reaches anvil too
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # never leave the chain (or its anvil) running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, (out, err)
    return out, err


@needs_anvil[0]
@needs_anvil[1]
def test_restart_with_state_keeps_balances_and_channels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGORANET_HOME", str(tmp_path))
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    fast_keystore(tmp_path / "wallet" / "keystore.json")
    address = keystore_address(tmp_path / "wallet" / "keystore.json")
    port, state = _free_port(), tmp_path / "chain" / "state.json"
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AGORANET_CHAIN_RPC_URL", url)

    first = _start(port, state)
    try:
        elapsed, banner = _wait_ready(url, first)
        print(f"agoranet chain up (fresh) after {elapsed:.2f} s")
        assert run_inprocess(capsys, monkeypatch, "wallet", "fund", "40").code == 0
        made = run_inprocess(capsys, monkeypatch, "wallet", "subkey", "new", "--deposit",
                             "7.25", "--receiver", RECEIVER, "--out", str(tmp_path / "a.json"))
        assert made.code == 0, made.err
    finally:
        out, err = _stop(first, signal.SIGTERM, group=False)
    assert "stablecoin" in banner and STABLECOIN_ADDRESS in banner and str(state) in banner
    assert f"state saved to {state}" in out and state.is_file(), (out, err)
    channel_id = json.loads((tmp_path / "a.json").read_text())["channel_id"]

    second = _start(port, state)
    try:
        print(f"agoranet chain up (from state) after {_wait_ready(url, second)[0]:.2f} s")
        w3 = connect(url)
        addrs = resolve_addresses(31337)
        assert balances(w3, addrs, address).stablecoin == 40_000_000 - 7_250_000
        (channel,) = find_channels(w3, addrs, address)
        assert channel.channel_id == channel_id
        assert (channel.balance, channel.total_claimed) == (7_250_000, 0)
        bal = run_inprocess(capsys, monkeypatch, "wallet", "balance")
        assert bal.code == 0 and "32.75" in bal.out
        exact = run_inprocess(capsys, monkeypatch, "wallet", "balance", "--base-units")
        assert exact.code == 0 and "32750000" in exact.out
        listed = run_inprocess(capsys, monkeypatch, "wallet", "channels")
        assert listed.code == 0 and channel_id in listed.out and "7.25" in listed.out
    finally:
        _stop(second, signal.SIGINT, group=True)


@pytest.fixture(scope="module")
def dev() -> Iterator[DevChain]:
    if ANVIL_MISSING:
        pytest.skip(ANVIL_MISSING)
    with start_devchain() as chain:
        yield chain


@needs_anvil[0]
@needs_anvil[1]
def test_addresses_of_the_dev_chain(
    dev: DevChain, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_inprocess(capsys, monkeypatch, "chain", "addresses", "--rpc-url", dev.rpc_url)
    assert result.code == 0, result.err
    for address in (dev.stablecoin, dev.escrow, dev.collector, dev.registry):
        assert address in result.out
    assert "none" not in result.out  # every contract has code


@needs_anvil[0]
@needs_anvil[1]
def test_addresses_of_an_unknown_chain(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_devchain(chain_id=424242) as other:
        result = run_inprocess(capsys, monkeypatch, "chain", "addresses", "--rpc-url",
                               other.rpc_url)
    assert result.code == 0, result.err
    assert "chain 424242" in result.out and BATCH_SETTLEMENT_ADDRESS in result.out
    assert "set AGORANET_CHAIN_STABLECOIN / AGORANET_CHAIN_REGISTRY" in result.out
    assert "AGORANET_CHAIN_STABLECOIN" in result.out and "AGORANET_CHAIN_REGISTRY" in result.out


@needs_anvil[0]
@needs_anvil[1]
def test_port_in_use_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_subprocess("chain", "--port", str(busy.getsockname()[1]))
    assert_one_line_error(result, "Address already in use")


def test_no_anvil_is_one_line(tmp_path: Path) -> None:
    env = {"AGORANET_ANVIL": "/nonexistent", "PATH": "/usr/bin:/bin"}
    result = run_subprocess("chain", "--port", str(_free_port()), env=env)
    assert_one_line_error(result, "AGORANET_ANVIL=/nonexistent is not a file")


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["chain", "addresses", "--rpc-url", "http://127.0.0.1:9"], "is unreachable", 1),
        (["chain", "addresses", "--rpc-url", "localhost:8545"], "must start with http", 1),
        (["chain", "--port", "70000"], "Invalid value for '--port'", 2),
        (["chain", "--chain-id", "zero"], "Invalid value for '--chain-id'", 2),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], needle: str, code: int, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert_one_line_error(run_inprocess(capsys, monkeypatch, *args), needle, code)
