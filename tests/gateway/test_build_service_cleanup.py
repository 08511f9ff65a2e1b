"""build_service closes what it built when a later part cannot be built."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agoranet.config import GatewaySettings
from agoranet.errors import ConfigError
from agoranet.gateway import app as gateway_app
from agoranet.gateway.reputation import Reputation
from agoranet.gateway.spendlog import SpendLog


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the stores closed, in order (the real close runs too)."""
    seen: list[str] = []
    for cls in (SpendLog, Reputation):
        original = cls.close

        def spy(self: Any, _original: Any = original, _name: str = cls.__name__) -> None:
            seen.append(_name)
            _original(self)

        monkeypatch.setattr(cls, "close", spy)
    return seen


def test_a_bad_policy_file_closes_the_stores_opened_before_it(tmp_path: Path,
                                                               closed: list[str]) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text("{not json")
    settings = GatewaySettings(spend_log=tmp_path / "spend.sqlite", policy_file=policy)
    with pytest.raises(ConfigError, match="policy file"):
        gateway_app.build_service(settings)
    assert sorted(closed) == ["Reputation", "SpendLog"]


def test_a_built_service_owns_its_stores_until_it_is_closed(tmp_path: Path,
                                                            closed: list[str]) -> None:
    service = gateway_app.build_service(GatewaySettings(spend_log=tmp_path / "spend.sqlite"))
    assert closed == []
    asyncio.run(service.aclose())
    assert sorted(closed) == ["Reputation", "SpendLog"]
