"""Compile agoranet's Vyper contracts with the ``vyper`` package, cached by source hash.

Artefacts (ABI, init and runtime bytecode, storage slots) are written as JSON
under :func:`cache_dir`; a cache entry is keyed by the sha256 of the compiler
version, EVM version and source, so editing a contract or upgrading Vyper
recompiles. Cache files are outputs only: never edit them by hand.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agoranet.errors import ContractError

__all__ = [
    "CACHE_ENV_VAR",
    "CONTRACTS_DIR",
    "CONTRACT_NAMES",
    "EVM_VERSION",
    "CompiledContract",
    "cache_dir",
    "compile_all",
    "compile_contract",
    "compile_source",
]

CONTRACT_NAMES: Final = (
    "Stablecoin",
    "BatchSettlement",
    "Erc3009DepositCollector",
    "ProviderRegistry",
    "Multicall3",
)
"""The contracts shipped in :data:`CONTRACTS_DIR` (``<name>.vy``)."""

EVM_VERSION: Final = "cancun"
CACHE_ENV_VAR: Final = "AGORANET_CONTRACTS_CACHE_DIR"
CONTRACTS_DIR: Final = Path(__file__).resolve().with_name("contracts")

_OUTPUTS: Final = ["abi", "bytecode", "bytecode_runtime", "layout"]
_CACHE_FORMAT: Final = 1


@dataclass(frozen=True)
class CompiledContract:
    """One compiled contract: what a deployer or a dev chain needs."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    runtime_bytecode: bytes
    storage_slots: dict[str, int]
    source_hash: str

    def slot(self, variable: str) -> int:
        """The storage slot of a top-level storage variable."""
        try:
            return self.storage_slots[variable]
        except KeyError as exc:
            raise ContractError(f"{self.name} has no storage variable {variable!r}") from exc

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (hex for bytes)."""
        return {
            "format": _CACHE_FORMAT,
            "name": self.name,
            "abi": self.abi,
            "bytecode": "0x" + self.bytecode.hex(),
            "runtime_bytecode": "0x" + self.runtime_bytecode.hex(),
            "storage_slots": self.storage_slots,
            "source_hash": self.source_hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompiledContract:
        """Inverse of :meth:`to_json`."""
        if data.get("format") != _CACHE_FORMAT:
            raise ValueError("unknown cache format")
        return cls(
            name=str(data["name"]),
            abi=list(data["abi"]),
            bytecode=bytes.fromhex(str(data["bytecode"]).removeprefix("0x")),
            runtime_bytecode=bytes.fromhex(str(data["runtime_bytecode"]).removeprefix("0x")),
            storage_slots={str(k): int(v) for k, v in dict(data["storage_slots"]).items()},
            source_hash=str(data["source_hash"]),
        )


def cache_dir() -> Path:
    """``$AGORANET_CONTRACTS_CACHE_DIR``, else ``$XDG_CACHE_HOME`` or ``~/.cache``, plus ``agoranet/contracts``."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agoranet" / "contracts"


def compile_contract(name: str, *, use_cache: bool = True) -> CompiledContract:
    """Compile one of :data:`CONTRACT_NAMES` (from the cache when possible)."""
    if name not in CONTRACT_NAMES:
        raise ContractError(f"unknown contract {name!r}; known: {', '.join(CONTRACT_NAMES)}")
    path = CONTRACTS_DIR / f"{name}.vy"
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ContractError(f"cannot read contract source {path}: {exc}") from exc
    return compile_source(source, name, use_cache=use_cache)


def compile_all(*, use_cache: bool = True) -> dict[str, CompiledContract]:
    """Compile every shipped contract, keyed by name."""
    return {name: compile_contract(name, use_cache=use_cache) for name in CONTRACT_NAMES}


def compile_source(source: str, name: str, *, use_cache: bool = True) -> CompiledContract:
    """Compile Vyper ``source`` as contract ``name``; raises :class:`ContractError` on failure."""
    vyper = importlib.import_module("vyper")  # deferred (slow) and untyped

    digest = hashlib.sha256(
        "\0".join([vyper.__version__, EVM_VERSION, name, source]).encode()
    ).hexdigest()
    entry = cache_dir() / f"{name}-{digest[:24]}.json"
    if use_cache:
        cached = _read_cache(entry, digest)
        if cached is not None:
            return cached
    compiled = _compile(source, name, digest)
    if use_cache:
        _write_cache(entry, compiled)
    return compiled


def _compile(source: str, name: str, digest: str) -> CompiledContract:
    compiler: Any = importlib.import_module("vyper.compiler")
    settings: Any = importlib.import_module("vyper.compiler.settings")
    errors: Any = importlib.import_module("vyper.exceptions")
    try:
        out = compiler.compile_code(
            source,
            contract_path=f"{name}.vy",
            output_formats=_OUTPUTS,
            settings=settings.Settings(evm_version=EVM_VERSION),
        )
    except (errors.VyperException, errors.VyperInternalException) as exc:
        raise ContractError(f"cannot compile {name}: {exc}") from exc
    layout = dict(out["layout"]).get("storage_layout", {})
    return CompiledContract(
        name=name,
        abi=list(out["abi"]),
        bytecode=bytes.fromhex(str(out["bytecode"]).removeprefix("0x")),
        runtime_bytecode=bytes.fromhex(str(out["bytecode_runtime"]).removeprefix("0x")),
        storage_slots={str(var): int(info["slot"]) for var, info in layout.items()},
        source_hash=digest,
    )


def _read_cache(entry: Path, digest: str) -> CompiledContract | None:
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        compiled = CompiledContract.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return compiled if compiled.source_hash == digest else None


def _write_cache(entry: Path, compiled: CompiledContract) -> None:
    """Write atomically; a cache that cannot be written is skipped, not fatal."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=entry.name, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(compiled.to_json(), fh)
        Path(tmp).replace(entry)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
