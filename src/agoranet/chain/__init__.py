"""Chain access: agoranet's Vyper contracts and the local dev chain.

``compiler`` builds the contracts (cached); ``devchain`` runs anvil with them
installed at the addresses the x402 SDK expects.
"""

from __future__ import annotations

from agoranet.chain.compiler import (
    CONTRACT_NAMES,
    CompiledContract,
    cache_dir,
    compile_all,
    compile_contract,
    compile_source,
)

__all__ = [
    "CONTRACT_NAMES",
    "CompiledContract",
    "cache_dir",
    "compile_all",
    "compile_contract",
    "compile_source",
]
