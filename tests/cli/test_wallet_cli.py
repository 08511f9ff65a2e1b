"""``agoranet wallet``: the whole flow on a dev chain, and one-line errors for bad input.

Most runs call the console entry point in-process (fast); prompts and the
no-traceback guarantee are also checked in real subprocesses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import Result, assert_one_line_error, run_inprocess, run_subprocess
from eth_account import Account

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain, start_devchain
from agoranet.chain.rpc import connect
from agoranet.payments.wallet import balances, unlock
from payments.support import ANVIL_MISSING, PASSWORD, fast_keystore, needs_anvil

RECEIVER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # dev account 2
ZERO_ID = "0x" + "00" * 32


@pytest.fixture(scope="module")
def dev() -> Iterator[DevChain]:
    if ANVIL_MISSING:
        pytest.skip(ANVIL_MISSING)
    with start_devchain() as chain:
        yield chain


@pytest.fixture(scope="module")
def sepolia_like() -> Iterator[DevChain]:
    """anvil with our contracts but chain id 84532 (Base Sepolia's): not a dev chain."""
    if ANVIL_MISSING:
        pytest.skip(ANVIL_MISSING)
    with start_devchain(chain_id=84532) as chain:
        yield chain


@pytest.fixture(scope="module")
def unknown_chain() -> Iterator[DevChain]:
    if ANVIL_MISSING:
        pytest.skip(ANVIL_MISSING)
    with start_devchain(chain_id=999_999) as chain:
        yield chain


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """AGORANET_HOME with a wallet (fast keystore) and the password in the environment."""
    monkeypatch.setenv("AGORANET_HOME", str(tmp_path))
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    for name in ("RPC_URL", "CHAIN_ID", "STABLECOIN", "ESCROW", "COLLECTOR", "REGISTRY"):
        monkeypatch.delenv(f"AGORANET_CHAIN_{name}", raising=False)
    monkeypatch.delenv("AGORANET_WALLET_KEYSTORE", raising=False)
    fast_keystore(tmp_path / "wallet" / "keystore.json")
    return tmp_path


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
        self.capsys, self.mp = capsys, mp
        self.outputs: list[str] = []

    def __call__(self, *args: str, stdin: str = "") -> Result:
        result = run_inprocess(self.capsys, self.mp, *args, stdin=stdin)
        self.outputs.append(result.out + result.err)
        return result


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    runner = Cli(capsys, monkeypatch)
    yield runner
    for text in runner.outputs:  # whatever happened, the password never shows
        assert PASSWORD not in text


@pytest.mark.slow
@pytest.mark.skipif(bool(ANVIL_MISSING), reason=ANVIL_MISSING or "anvil found")
def test_wallet_flow_on_the_dev_chain(home: Path, dev: DevChain, cli: Cli) -> None:
    rpc = ["--rpc-url", dev.rpc_url]
    keystore = home / "wallet" / "keystore.json"
    address = unlock(keystore, PASSWORD).address
    shown = cli("wallet", "show")
    assert shown.code == 0 and address in shown.out and str(keystore) in shown.out

    assert cli("wallet", "fund", "250.5", *rpc).code == 0
    bal = cli("wallet", "balance", *rpc)
    assert bal.code == 0 and "250.50" in bal.out and "250500000" not in bal.out
    bal = cli("wallet", "balance", "--base-units", *rpc)
    assert bal.code == 0 and "250500000" in bal.out
    as_json = json.loads(cli("wallet", "balance", "--json", *rpc).out)
    assert as_json["stablecoin"] == 250_500_000 and as_json["address"] == address
    w3 = connect(dev.rpc_url)
    addrs = resolve_addresses(31337)
    assert balances(w3, addrs, address).stablecoin == 250_500_000
    assert balances(w3, addrs, address).native == 10**18

    out = home / "agent.json"
    made = cli("wallet", "subkey", "new", "--deposit", "12.5", "--receiver", RECEIVER,
               "--out", str(out), *rpc)
    assert made.code == 0, made.err
    assert out.stat().st_mode & 0o777 == 0o600
    data = json.loads(out.read_text())
    channel_id, sub_key = data["channel_id"], data["private_key"]
    assert data["deposit"] == "12500000" and data["channel_config"]["payer"] == address
    assert data["channel_config"]["payerAuthorizer"] == Account.from_key(sub_key).address
    assert sub_key[2:] not in made.out  # the key goes to the file only
    assert balances(w3, addrs, address).stablecoin == 238_000_000

    listed = cli("wallet", "channels", *rpc)
    assert listed.code == 0 and channel_id in listed.out and "12.50" in listed.out
    assert all(len(line) <= 80 for line in listed.out.splitlines())
    rows = json.loads(cli("wallet", "channels", "--json", *rpc).out)["channels"]
    assert [(r["channel"], r["available"]) for r in rows] == [(channel_id, 12_500_000)]

    started = cli("wallet", "subkey", "revoke", str(out), *rpc)
    assert started.code == 0 and "withdrawal of 12.50 started" in started.out
    done = cli("wallet", "subkey", "revoke", channel_id, "--wait", *rpc)
    assert done.code == 0 and "revoked: 12.50 returned" in done.out, done.out
    assert balances(w3, addrs, address).stablecoin == 250_500_000
    again = cli("wallet", "subkey", "revoke", str(out), *rpc)
    assert again.code == 0 and "nothing left" in again.out

    copy = home / "exported.json"
    assert cli("wallet", "export", "--out", str(copy)).code == 0
    assert json.loads(copy.read_text()) == json.loads(keystore.read_text())
    raw = home / "key.txt"
    exported = cli("wallet", "export", "--private-key", "--yes", "--out", str(raw))
    assert exported.code == 0 and raw.stat().st_mode & 0o777 == 0o600
    key_hex = raw.read_text().strip()
    assert Account.from_key(key_hex).address == address
    assert all(key_hex[2:] not in text for text in cli.outputs)


@needs_anvil[0]
@needs_anvil[1]
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["wallet", "balance", "--address", "0x123"], "not an Ethereum address"),
        (["wallet", "fund", "--", "-5"], "is negative"),
        (["wallet", "fund", "abc"], "is not a number"),
        (["wallet", "fund", "1.0000001"], "more than 6 decimals"),
        (["wallet", "fund", "1.5", "--base-units"], "whole number of base units"),
        (["wallet", "fund", "1", "--native", "-1"], "--native '-1' is negative"),
        (["wallet", "fund", "1", "--to", "0xZZ"], "--to '0xZZ' is not an Ethereum address"),
        (["wallet", "subkey", "new", "--deposit", "-1", "--receiver", RECEIVER], "negative"),
        (["wallet", "subkey", "new", "--deposit", "0", "--receiver", RECEIVER], "more than zero"),
        (["wallet", "subkey", "new", "--deposit", "1", "--receiver", "bob"],
         "--receiver 'bob' is not an Ethereum address"),
        (["wallet", "subkey", "revoke", "nonsense"], "neither a sub-key file nor a channel id"),
        (["wallet", "subkey", "revoke", "0x1234"], "is not a channel id"),
        (["wallet", "subkey", "revoke", ZERO_ID], "no channel"),
    ],
)
def test_bad_input_on_the_dev_chain(
    home: Path, dev: DevChain, cli: Cli, args: list[str], needle: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGORANET_CHAIN_RPC_URL", dev.rpc_url)  # the env var is honoured too
    assert_one_line_error(cli(*args), needle)


@needs_anvil[0]
@needs_anvil[1]
def test_wrong_password(home: Path, dev: DevChain, cli: Cli,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", "not-" + PASSWORD)
    result = cli("wallet", "subkey", "new", "--deposit", "1", "--receiver", RECEIVER,
                 "--rpc-url", dev.rpc_url)
    assert_one_line_error(result, "wrong password for keystore")
    assert "not-" + PASSWORD not in result.out + result.err
    exported = cli("wallet", "export", "--private-key", "--yes", "--out", str(home / "k"))
    assert_one_line_error(exported, "wrong password")
    assert not (home / "k").exists()


@needs_anvil[0]
@needs_anvil[1]
def test_fund_refused_off_the_dev_chain(home: Path, sepolia_like: DevChain, cli: Cli) -> None:
    rpc = ["--rpc-url", sepolia_like.rpc_url]
    assert_one_line_error(cli("wallet", "fund", "10", *rpc),
                          "fund works only on the local dev chain (chain id 31337)")
    assert_one_line_error(cli("wallet", "subkey", "revoke", ZERO_ID, "--wait", *rpc),
                          "--wait only works on the dev chain")
    # Base Sepolia's USDC (from the SDK) has no code on this anvil: said so, in one line.
    assert_one_line_error(cli("wallet", "balance", *rpc), "no contract at stablecoin address")


@needs_anvil[0]
@needs_anvil[1]
def test_unknown_chain(home: Path, unknown_chain: DevChain, cli: Cli) -> None:
    rpc = ["--rpc-url", unknown_chain.rpc_url]
    bal = cli("wallet", "balance", *rpc)
    assert bal.code == 0 and "no stablecoin known" in bal.out
    assert_one_line_error(
        cli("wallet", "subkey", "new", "--deposit", "1", "--receiver", RECEIVER, *rpc),
        "no stablecoin known for chain 999999",
    )


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["wallet", "balance", "--rpc-url", "http://127.0.0.1:9"], "no chain answers at", 1),
        (["wallet", "fund", "--rpc-url", "http://127.0.0.1:9"], "no chain answers at", 1),
        (["wallet", "channels", "--rpc-url", "http://127.0.0.1:9"], "no chain answers at", 1),
        (["wallet", "balance", "--rpc-url", "ftp://x"], "must start with http", 1),
        (["wallet", "new"], "already exists", 1),
        (["wallet", "fund", "-5"], "No such option '-5'", 2),
        (["wallet", "subkey", "new", "--deposit", "1"], "Missing option '--receiver'", 2),
        (["wallet", "subkey", "new", "--receiver", RECEIVER, "--deposit", "1",
          "--withdraw-delay", "10"], "Invalid value for '--withdraw-delay'", 2),
        (["wallet", "export"], "Missing option '--out'", 2),
        (["wallet", "frobnicate"], "No such command", 2),
    ],
)
def test_bad_input_without_a_chain(
    home: Path, cli: Cli, args: list[str], needle: str, code: int
) -> None:
    assert_one_line_error(cli(*args), needle, code)


def test_missing_keystore(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORANET_HOME", str(tmp_path))
    for args in (["wallet", "show"], ["wallet", "channels"], ["wallet", "export", "--out", "x"],
                 ["wallet", "show", "--keystore", str(tmp_path / "nope.json")]):
        assert_one_line_error(cli(*args), "no wallet at")


def test_new_with_prompted_password_in_a_subprocess(tmp_path: Path) -> None:
    env = {"AGORANET_HOME": str(tmp_path), "AGORANET_WALLET_PASSWORD": ""}
    made = run_subprocess("wallet", "new", env=env, stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert made.code == 0, made.err
    keystore = tmp_path / "wallet" / "keystore.json"
    address = unlock(keystore, PASSWORD).address
    assert address in made.out and PASSWORD not in made.out + made.err
    wrong = run_subprocess("wallet", "export", "--private-key", "--out",
                           str(tmp_path / "k.txt"), env=env, stdin="guess\n")
    # Without a terminal, getpass warns that input may echo, then reads stdin.
    assert wrong.code == 1 and "Traceback" not in wrong.err
    assert wrong.err.strip().splitlines()[-1].startswith("error: wrong password for keystore")
    assert wrong.err.count("error:") == 1
    assert "guess" not in wrong.out and not (tmp_path / "k.txt").exists()
    mismatch = run_subprocess("wallet", "new", "--keystore", str(tmp_path / "b.json"), env=env,
                              stdin=f"{PASSWORD}\nother\n")
    assert mismatch.code != 0 and "Traceback" not in mismatch.err
    assert PASSWORD not in mismatch.out + mismatch.err and not (tmp_path / "b.json").exists()
