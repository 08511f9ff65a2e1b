"""LoRA adapters as owned, content-addressed directories.

An adapter is a directory with peft's ``adapter_config.json`` and
``adapter_model.safetensors`` plus our manifest ``agoranet-adapter.json`` (base
model weights hash, rank, training-data hash, creation time). Its id is the
sha256 over its files in a canonical order, so anyone can recompute it; a model
served with an adapter is named ``BASE@adapter:<id>``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from agoranet.engines.weights import file_sha256
from agoranet.errors import AdapterError
from agoranet.market import ModelName

__all__ = [
    "ADAPTER_FILES",
    "MANIFEST",
    "Adapter",
    "AdapterManifest",
    "adapter_id",
    "adapter_model_name",
    "pack_adapter",
    "parse_model_name",
    "read_adapter",
    "unpack_adapter",
]

MANIFEST = "agoranet-adapter.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", MANIFEST)


class AdapterManifest(BaseModel):
    format: int = 1
    base_model: str
    base_model_sha256: str | None
    rank: int
    alpha: int
    target_modules: list[str] | str
    data_sha256: str | None = None
    examples: int | None = None
    created: str
    heldout_loss_before: float | None = None
    heldout_loss_after: float | None = None


@dataclass(frozen=True)
class Adapter:
    id: str
    path: Path
    manifest: AdapterManifest


def adapter_id(directory: Path) -> str:
    """sha256 over ``name NUL sha256(file) LF`` for each adapter file, in name order."""
    digest = hashlib.sha256()
    for name in sorted(ADAPTER_FILES):
        path = directory / name
        if not path.is_file():
            raise AdapterError(f"{directory} is not an adapter: {name} is missing")
        digest.update(f"{name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def read_adapter(directory: Path) -> Adapter:
    """Load and check an adapter directory's manifest and config, and compute its id."""
    ident = adapter_id(directory)
    try:
        manifest = AdapterManifest.model_validate_json((directory / MANIFEST).read_text())
        json.loads((directory / "adapter_config.json").read_text())
    except (ValidationError, json.JSONDecodeError, OSError) as exc:
        raise AdapterError(f"{directory}: invalid adapter metadata: {exc}") from exc
    return Adapter(ident, directory, manifest)


def adapter_model_name(base: str, ident: str) -> str:
    return str(ModelName(base, ident))


def parse_model_name(name: str) -> tuple[str, str | None]:
    """``("base", id)`` for ``base@adapter:<id>``, ``("base", None)`` for a plain name;
    :class:`~agoranet.errors.AdapterError` for a malformed adapter id."""
    try:
        parsed = ModelName.parse(name)
    except ValueError as exc:
        raise AdapterError(str(exc)) from None
    return parsed.base, parsed.adapter


def pack_adapter(directory: Path) -> bytes:
    """The adapter's files as an uncompressed tar archive (the upload format)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in ADAPTER_FILES:
            info = archive.gettarinfo(str(directory / name), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with (directory / name).open("rb") as handle:
                archive.addfile(info, handle)
    return buffer.getvalue()


def _read_archive(data: bytes, max_bytes: int) -> dict[str, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            members = archive.getmembers()
            names = sorted(m.name for m in members)
            if names != sorted(ADAPTER_FILES) or not all(m.isfile() for m in members):
                raise AdapterError(
                    f"an adapter archive holds exactly {', '.join(ADAPTER_FILES)} as plain files"
                )
            if sum(m.size for m in members) > max_bytes:
                raise AdapterError(f"the adapter is larger than {max_bytes} bytes")
            files = {}
            for member in members:
                source = archive.extractfile(member)
                if source is None:
                    raise AdapterError(f"cannot read {member.name} from the archive")
                files[member.name] = source.read()
            return files
    except tarfile.TarError as exc:
        raise AdapterError(f"the upload is not a valid tar archive: {exc}") from exc


def unpack_adapter(data: bytes, store: Path, max_bytes: int) -> Adapter:
    """Check and store an uploaded archive under ``store/<id>``; returns the adapter.

    Only the three adapter files are accepted, as regular files, within
    ``max_bytes`` in all; anything else is refused before it touches the disk.
    """
    files = _read_archive(data, max_bytes)
    staging = store / f".upload-{hashlib.sha256(data).hexdigest()[:16]}"
    staging.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (staging / name).write_bytes(content)
    try:
        adapter = read_adapter(staging)
    except AdapterError:
        shutil.rmtree(staging)
        raise
    final = store / adapter.id
    if final.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(final)
    return read_adapter(final)
