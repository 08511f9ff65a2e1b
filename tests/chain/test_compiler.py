"""The compiler wrapper: artefacts, caching, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agoranet.chain import CONTRACT_NAMES, compile_all, compile_contract, compile_source
from agoranet.chain.compiler import CACHE_ENV_VAR, CompiledContract, cache_dir
from agoranet.errors import ContractError

TINY = "# pragma version ~=0.4.3\nx: public(uint256)\n"


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    return tmp_path


def test_all_contracts_compile() -> None:
    compiled = compile_all()
    assert set(compiled) == set(CONTRACT_NAMES)
    for c in compiled.values():
        assert c.bytecode and c.runtime_bytecode
        assert len(c.runtime_bytecode) < 24_576  # EIP-170
        assert any(e.get("type") == "function" for e in c.abi)


def test_cache_written_and_reused(tmp_cache: Path) -> None:
    first = compile_source(TINY, "Tiny")
    files = list(tmp_cache.glob("Tiny-*.json"))
    assert len(files) == 1
    assert cache_dir() == tmp_cache
    data = json.loads(files[0].read_text())
    data["bytecode"] = "0x00"  # a cache hit returns what the file says
    files[0].write_text(json.dumps(data))
    assert compile_source(TINY, "Tiny").bytecode == b"\x00"
    assert compile_source(TINY, "Tiny", use_cache=False).bytecode == first.bytecode


def test_source_change_misses_cache(tmp_cache: Path) -> None:
    compile_source(TINY, "Tiny")
    compile_source(TINY + "y: public(uint256)\n", "Tiny")
    assert len(list(tmp_cache.glob("Tiny-*.json"))) == 2


def test_corrupt_cache_recompiles(tmp_cache: Path) -> None:
    good = compile_source(TINY, "Tiny")
    (entry,) = tmp_cache.glob("Tiny-*.json")
    entry.write_text("{not json")
    assert compile_source(TINY, "Tiny") == good


def test_unwritable_cache_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV_VAR, str(blocker / "sub"))
    assert compile_source(TINY, "Tiny").runtime_bytecode


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "agoranet" / "contracts"


def test_bad_source_raises_contract_error(tmp_cache: Path) -> None:
    with pytest.raises(ContractError, match="cannot compile Broken"):
        compile_source("def f(:\n", "Broken")


def test_unknown_contract() -> None:
    with pytest.raises(ContractError, match="unknown contract"):
        compile_contract("Nope")


def test_storage_slots_and_json_roundtrip() -> None:
    c = compile_contract("Erc3009DepositCollector")
    assert c.slot("settlement") == 0
    with pytest.raises(ContractError):
        c.slot("missing")
    assert CompiledContract.from_json(c.to_json()) == c
