"""The gateway service closes what it owns, once, and all of it even if one part fails."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from agoranet.config import GatewaySettings
from agoranet.gateway.app import build_service


def test_aclose_closes_the_client_the_spend_log_and_the_reputation(tmp_path: Path) -> None:
    service = build_service(GatewaySettings(nodes=[], budget=100,
                                            spend_log=tmp_path / "spend.sqlite"))
    asyncio.run(service.aclose())
    assert service.client.is_closed
    with pytest.raises(sqlite3.ProgrammingError):  # closed database
        service.spend.total()
    reputation = service.directory.reputation
    assert reputation is not None
    with pytest.raises(sqlite3.ProgrammingError):
        reputation.imported()


def test_a_failing_part_does_not_keep_the_others_open(tmp_path: Path) -> None:
    service = build_service(GatewaySettings(nodes=[], budget=100,
                                            spend_log=tmp_path / "spend.sqlite"))

    def broken() -> None:
        raise OSError("disk gone")

    service.spend.close = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk gone"):
        asyncio.run(service.aclose())
    assert service.client.is_closed
    assert service.directory.reputation is not None
    with pytest.raises(sqlite3.ProgrammingError):
        service.directory.reputation.imported()
