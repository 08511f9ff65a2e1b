"""Chain access: agoranet's Vyper contracts and the local dev chain.

``compiled`` reads the shipped contract artefacts (ABI, bytecode: package data, no
compiler needed); ``compiler`` builds them from source (a development tool, needs
``vyper``); ``devchain`` runs anvil with them installed at the addresses the x402
SDK expects.
"""

from __future__ import annotations

from typing import Any

from agoranet.chain.compiled import CONTRACT_NAMES, CompiledContract, contract_abi, load_artifact

__all__ = [
    "CONTRACT_NAMES",
    "CompiledContract",
    "cache_dir",
    "compile_all",
    "compile_contract",
    "compile_source",
    "contract_abi",
    "load_artifact",
]

_COMPILER_NAMES = frozenset({"cache_dir", "compile_all", "compile_contract", "compile_source"})


def __getattr__(name: str) -> Any:
    """The compiler's functions, imported on first use only (so importing this package,
    or running ``python -m agoranet.chain.compiler``, does not load the compiler)."""
    if name in _COMPILER_NAMES:
        from agoranet.chain import compiler

        return getattr(compiler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
