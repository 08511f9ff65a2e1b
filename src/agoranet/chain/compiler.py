"""Compile agoranet's Vyper contracts with the ``vyper`` package, cached by source hash.

A development tool: run-time code reads the shipped artefacts
(:mod:`agoranet.chain.compiled`) and never imports this compiler's ``vyper``.
``python -m agoranet.chain.compiler --write`` (``make contracts``) regenerates
those artefacts from the sources; ``--check`` says whether they are current.

Compiled artefacts (ABI, init and runtime bytecode, storage slots) are cached as
JSON under :func:`cache_dir`; a cache entry is keyed by the sha256 of the compiler
version, EVM version and source, so editing a contract or upgrading Vyper
recompiles. Cache files are outputs only: never edit them by hand.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from agoranet.chain.compiled import CONTRACT_NAMES, CompiledContract
from agoranet.errors import ContractError

__all__ = [
    "ARTIFACTS_DIR",
    "CACHE_ENV_VAR",
    "CONTRACTS_DIR",
    "CONTRACT_NAMES",
    "EVM_VERSION",
    "CompiledContract",
    "artifact_text",
    "cache_dir",
    "compile_all",
    "compile_contract",
    "compile_source",
    "main",
    "stale_artifacts",
    "write_artifacts",
]

EVM_VERSION: Final = "cancun"
CACHE_ENV_VAR: Final = "AGORANET_CONTRACTS_CACHE_DIR"
CONTRACTS_DIR: Final = Path(__file__).resolve().with_name("contracts")
ARTIFACTS_DIR: Final = Path(__file__).resolve().with_name("artifacts")
"""Where the shipped artefacts live in a source checkout (:mod:`agoranet.chain.compiled`)."""

_OUTPUTS: Final = ["abi", "bytecode", "bytecode_runtime", "layout"]


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
    try:
        vyper = importlib.import_module("vyper")  # deferred (slow) and untyped
    except ImportError as exc:
        raise ContractError("compiling the contracts needs the vyper compiler (the `dev` "
                            "extra: pip install -e '.[dev]'); nodes, gateways and the dev "
                            "chain use the shipped artefacts without it") from exc

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


def artifact_text(compiled: CompiledContract) -> str:
    """The shipped artefact file of ``compiled``: stable JSON, one key per line."""
    return json.dumps(compiled.to_json(), indent=1, sort_keys=True) + "\n"


def stale_artifacts(directory: Path = ARTIFACTS_DIR) -> list[str]:
    """The contracts whose artefact in ``directory`` differs from a fresh compile of its
    source (missing ones included)."""
    stale = []
    for name, compiled in compile_all(use_cache=False).items():
        entry = directory / f"{name}.json"
        try:
            current = entry.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != artifact_text(compiled):
            stale.append(name)
    return stale


def write_artifacts(directory: Path = ARTIFACTS_DIR) -> list[Path]:
    """Compile every contract from source (no cache) and write its artefact into
    ``directory``; the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, compiled in compile_all(use_cache=False).items():
        entry = directory / f"{name}.json"
        entry.write_text(artifact_text(compiled), encoding="utf-8")
        written.append(entry)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m agoranet.chain.compiler --write | --check``."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--write"]:
        for entry in write_artifacts():
            print(f"wrote {entry}")
        return 0
    if args == ["--check"]:
        stale = stale_artifacts()
        for name in stale:
            print(f"{name}: the shipped artefact differs from its source; run "
                  "`python -m agoranet.chain.compiler --write`", file=sys.stderr)
        return 1 if stale else 0
    print("usage: python -m agoranet.chain.compiler --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
