"""The keystore: round trip, wrong password, file modes, and no secret in the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from agoranet.errors import WalletError, WrongPasswordError
from agoranet.payments.wallet import (
    create_keystore,
    default_keystore,
    keystore_address,
    unlock,
    write_private,
)

from .support import FAST_SCRYPT_N, PASSWORD, fast_keystore


def test_keystore_round_trip(tmp_path: Path) -> None:
    key = Account.create()
    path = tmp_path / "wallet" / "keystore.json"
    address = fast_keystore(path, key=bytes(key.key))
    assert address == key.address == keystore_address(path)
    assert unlock(path, PASSWORD).key == key.key
    text = path.read_text()
    assert bytes(key.key).hex() not in text.lower() and PASSWORD not in text
    data = json.loads(text)
    assert data["crypto"]["kdf"] == "scrypt" and data["crypto"]["kdfparams"]["n"] == FAST_SCRYPT_N
    assert path.stat().st_mode & 0o777 == 0o600


def test_default_work_factor_is_eth_accounts(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keystore(path, PASSWORD)
    assert json.loads(path.read_text())["crypto"]["kdfparams"]["n"] == 2**18


def test_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    fast_keystore(path)
    with pytest.raises(WrongPasswordError, match="wrong password") as info:
        unlock(path, PASSWORD + "x")
    assert PASSWORD not in str(info.value)


def test_refusals(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    fast_keystore(path)
    with pytest.raises(WalletError, match="already exists"):
        fast_keystore(path)
    with pytest.raises(WalletError, match="must not be empty"):
        create_keystore(tmp_path / "empty.json", "")
    with pytest.raises(WalletError, match="no wallet at"):
        keystore_address(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(WalletError, match="cannot read keystore"):
        unlock(tmp_path / "junk.json", PASSWORD)
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(WalletError, match="not a Web3 Secret Storage"):
        keystore_address(tmp_path / "other.json")


def test_write_private_is_0600_and_exclusive(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "secret.txt"
    write_private(out, "x")
    assert out.stat().st_mode & 0o777 == 0o600 and out.read_text() == "x"
    with pytest.raises(WalletError, match="already exists"):
        write_private(out, "y")
    assert out.read_text() == "x"


def test_default_keystore_honours_agoranet_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGORANET_HOME", str(tmp_path))
    assert default_keystore() == tmp_path / "wallet" / "keystore.json"
