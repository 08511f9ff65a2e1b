from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ensure_tiny_model, node_process


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model: Path):  # type: ignore[no-untyped-def]
    from agoranet.engines.hf import load_model

    return load_model(str(tiny_model))


@pytest.fixture
async def tiny_engine(tiny_loaded) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    from agoranet.engines.hf import TransformersEngine

    engine = TransformersEngine(loaded=tiny_loaded, max_active=4, max_queue=8)
    yield engine
    await engine.aclose()


@pytest.fixture(scope="session")
def tiny_node(tiny_model: Path) -> Iterator[str]:
    """A real ``agoranet node`` process serving the tiny model; its ``/v1`` URL."""
    with node_process(["--model", str(tiny_model)]) as url:
        yield url
