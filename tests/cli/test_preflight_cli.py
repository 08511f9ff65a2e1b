"""Issue #15 item 4: checks before long work, each a plain one-line error.

Real ``python -m agoranet`` processes. ``--model`` names an empty directory where
the check must come first: loading it fails, so an error about the port, the wallet
or the chain proves the check ran before the model loaded.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import assert_one_line_error, run_subprocess

ENV = {"COLUMNS": "80", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def empty_model(tmp_path: Path) -> Path:
    (tmp_path / "empty-model").mkdir()
    return tmp_path / "empty-model"


def test_default_model_outside_the_checkout_says_how_to_build_it(tmp_path: Path) -> None:
    result = run_subprocess("node", "--port", "0", env={**ENV, "AGORANET_HOME": str(tmp_path)},
                            cwd=tmp_path, timeout=60)
    assert_one_line_error(result, "models/tiny: no such directory")
    assert "`agoranet model tiny`" in result.err


def test_node_on_a_taken_port_fails_before_loading(taken_port: int, empty_model: Path,
                                                   tmp_path: Path) -> None:
    result = run_subprocess("node", "--model", str(empty_model), "--port", str(taken_port),
                            env={**ENV, "AGORANET_HOME": str(tmp_path)}, timeout=60)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{taken_port}")
    assert "Errno" not in result.err and "--port" in result.err


def test_paid_node_without_a_wallet_fails_before_loading(empty_model: Path,
                                                         tmp_path: Path) -> None:
    result = run_subprocess("node", "--model", str(empty_model), "--port", "0",
                            "--price-out", "5", env={**ENV, "AGORANET_HOME": str(tmp_path)},
                            timeout=60)
    assert_one_line_error(result, "no wallet at")
    assert "agoranet wallet new" in result.err


def test_paid_node_without_a_chain_fails_before_loading(empty_model: Path, tmp_path: Path,
                                                        closed_port: int) -> None:
    env = {**ENV, "AGORANET_HOME": str(tmp_path), "AGORANET_WALLET_PASSWORD": "pw-pw-pw-1"}
    assert run_subprocess("wallet", "new", env=env, timeout=60).code == 0
    rpc = f"http://127.0.0.1:{closed_port}"
    result = run_subprocess("node", "--model", str(empty_model), "--port", "0",
                            "--price-out", "5", "--rpc-url", rpc, env=env, timeout=60)
    assert_one_line_error(result, f"no chain answers at {rpc}")
    assert "`agoranet chain`" in result.err


def test_wallet_fund_without_a_chain_says_to_start_one(tmp_path: Path,
                                                       closed_port: int) -> None:
    rpc = f"http://127.0.0.1:{closed_port}"
    result = run_subprocess("wallet", "fund", "--to", "0x" + "11" * 20, "--rpc-url", rpc,
                            env={**ENV, "AGORANET_HOME": str(tmp_path)}, timeout=60)
    assert_one_line_error(result, f"no chain answers at {rpc}; start the dev chain with "
                                  "`agoranet chain`")


def test_gateway_on_a_taken_port(taken_port: int, tmp_path: Path) -> None:
    result = run_subprocess("gateway", "--open", "--node", "http://127.0.0.1:9/v1",
                            "--port", str(taken_port), "--spend-log",
                            str(tmp_path / "spend.sqlite"),
                            env={**ENV, "AGORANET_HOME": str(tmp_path)}, timeout=60)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{taken_port}")
