"""Compiled contracts as shipped: ABI, init and runtime bytecode, storage slots.

Every node, gateway and wallet reads its contracts' ABIs from here, so none of
them needs the Vyper compiler. The artefacts are package data
(``agoranet/chain/artifacts/<Name>.json``), generated from the sources in
``agoranet/chain/contracts`` by ``python -m agoranet.chain.compiler --write``
(``make contracts``) and committed; a test compiles the sources afresh and
checks that they are unchanged. Never edit them by hand.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from agoranet.errors import ContractError

__all__ = [
    "ARTIFACT_FORMAT",
    "CONTRACT_NAMES",
    "CompiledContract",
    "contract_abi",
    "load_artifact",
]

CONTRACT_NAMES: Final = (
    "Stablecoin",
    "BatchSettlement",
    "Erc3009DepositCollector",
    "ProviderRegistry",
    "Multicall3",
)
"""The contracts agoranet ships (sources ``contracts/<name>.vy``, artefacts ``artifacts/<name>.json``)."""

ARTIFACT_FORMAT: Final = 1
_ARTIFACTS: Final = "artifacts"


@dataclass(frozen=True)
class CompiledContract:
    """One compiled contract: what a deployer, a dev chain or a web3 client needs."""

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
            "format": ARTIFACT_FORMAT,
            "name": self.name,
            "abi": self.abi,
            "bytecode": "0x" + self.bytecode.hex(),
            "runtime_bytecode": "0x" + self.runtime_bytecode.hex(),
            "storage_slots": self.storage_slots,
            "source_hash": self.source_hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompiledContract:
        """Inverse of :meth:`to_json` (ValueError for another format)."""
        if data.get("format") != ARTIFACT_FORMAT:
            raise ValueError("unknown artefact format")
        return cls(
            name=str(data["name"]),
            abi=list(data["abi"]),
            bytecode=bytes.fromhex(str(data["bytecode"]).removeprefix("0x")),
            runtime_bytecode=bytes.fromhex(str(data["runtime_bytecode"]).removeprefix("0x")),
            storage_slots={str(k): int(v) for k, v in dict(data["storage_slots"]).items()},
            source_hash=str(data["source_hash"]),
        )


@functools.cache
def load_artifact(name: str) -> CompiledContract:
    """The shipped artefact of contract ``name`` (one of :data:`CONTRACT_NAMES`)."""
    if name not in CONTRACT_NAMES:
        raise ContractError(f"unknown contract {name!r}; known: {', '.join(CONTRACT_NAMES)}")
    entry = resources.files(__package__ or "agoranet.chain") / _ARTIFACTS / f"{name}.json"
    try:
        return CompiledContract.from_json(json.loads(entry.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ContractError(f"the packaged artefact of {name} is missing or damaged ({exc}); "
                            "regenerate it with `python -m agoranet.chain.compiler --write`"
                            ) from exc


def contract_abi(name: str) -> list[dict[str, Any]]:
    """The ABI of contract ``name``, from its shipped artefact."""
    return load_artifact(name).abi
