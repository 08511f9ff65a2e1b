"""Where the payer's channel state lives: ``payer.sqlite`` in the node's folder, created with
any missing parents, so a gateway restarted (or upgraded) finds the channel it paid from."""

from __future__ import annotations

from pathlib import Path

from agoranet.payments.pay.payer_store import ChannelState, PayerStore


def test_the_store_is_created_under_missing_folders_and_found_again(tmp_path: Path) -> None:
    folder = tmp_path / "gateway" / "channels" / "0123abcd"
    store = PayerStore(folder)
    assert store.load() is None
    store.save(ChannelState("0x" + "ab" * 32, {}, deposited=500, charged=20, voucher=40))
    store.close()
    assert store.path == folder / "payer.sqlite" and store.path.is_file()
    again = PayerStore(folder)
    assert again.load() is not None and again.load()["charged"] == 20  # type: ignore[index]
    again.close()
