"""Identity of model weights: the sha256 of each weight file and of the whole set."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

__all__ = ["WEIGHT_SUFFIXES", "file_sha256", "hash_weights", "weight_files", "weights_id"]

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_weights(files: Iterable[Path], root: Path | None = None) -> dict[str, str]:
    """``{relative name: sha256}`` for each weight file, in sorted order."""
    hashes: dict[str, str] = {}
    for path in sorted(files):
        name = str(path.relative_to(root)) if root else path.name
        hashes[name] = file_sha256(path)
    return hashes


def weights_id(hashes: dict[str, str]) -> str:
    """One sha256 naming a set of weight files: over the canonical JSON of their hashes."""
    canonical = json.dumps(dict(sorted(hashes.items())), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def weight_files(directory: Path) -> list[Path]:
    """The files that carry a model's weights (safetensors preferred over pickles)."""
    for suffixes in ((".safetensors",), (".gguf",), (".bin", ".pt")):
        found = [p for p in directory.rglob("*") if p.is_file() and p.suffix in suffixes]
        if found:
            return sorted(found)
    return []
