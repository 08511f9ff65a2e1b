"""Adapter identity and the upload format."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from agoranet.errors import AdapterError
from agoranet.tuning.adapter import (
    adapter_id,
    pack_adapter,
    parse_model_name,
    read_adapter,
    unpack_adapter,
)


def test_id_is_stable_and_content_addressed(house_adapter: Path, tmp_path: Path) -> None:
    ident = adapter_id(house_adapter)
    copy = tmp_path / "copy"
    shutil.copytree(house_adapter, copy)
    assert adapter_id(copy) == ident
    (copy / "adapter_config.json").write_text((copy / "adapter_config.json").read_text() + " ")
    assert adapter_id(copy) != ident


def test_pack_unpack_round_trip(house_adapter: Path, tmp_path: Path) -> None:
    stored = unpack_adapter(pack_adapter(house_adapter), tmp_path / "store", 10**8)
    assert stored.id == read_adapter(house_adapter).id
    assert stored.path == tmp_path / "store" / stored.id
    again = unpack_adapter(pack_adapter(house_adapter), tmp_path / "store", 10**8)
    assert again.path == stored.path
    assert [p.name for p in (tmp_path / "store").iterdir()] == [stored.id]


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("archive", "needle"),
    [
        (b"not a tar at all", "not a valid tar"),
        (_tar({"../evil": b"x"}), "holds exactly"),
        (_tar({"adapter_config.json": b"{}"}), "holds exactly"),
    ],
)
def test_bad_archives_are_refused(archive: bytes, needle: str, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=needle):
        unpack_adapter(archive, tmp_path, 10**8)
    assert not any(tmp_path.iterdir())


def test_size_limit(house_adapter: Path, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="larger than"):
        unpack_adapter(pack_adapter(house_adapter), tmp_path, 1000)


def test_model_names() -> None:
    ident = "a" * 64
    assert parse_model_name(f"tiny@adapter:{ident}") == ("tiny", ident)
    assert parse_model_name("tiny") == ("tiny", None)
    with pytest.raises(AdapterError, match="64 lowercase hex"):
        parse_model_name("tiny@adapter:XYZ")
