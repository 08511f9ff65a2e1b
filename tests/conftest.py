from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Nodes, wallets and adapters started by tests keep their state out of the user's home.
os.environ.setdefault("AGORANET_HOME", tempfile.mkdtemp(prefix="agoranet-test-home-"))

from helpers import ensure_embedding_model, ensure_small_model, ensure_tiny_model, node_process


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def small_model() -> Path:
    """The smaller tiny-model variant (same tokenizer), for the "smaller" cheat."""
    return ensure_small_model()


@pytest.fixture(scope="session")
def embedding_model() -> Path:
    """The tiny embedding model (random small BERT in the sentence-transformers layout)."""
    return ensure_embedding_model()


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


def _train(tmp_path_factory: pytest.TempPathFactory, tiny_loaded, brief: bool) -> Path:  # type: ignore[no-untyped-def]
    from agoranet.tuning.data import load_jsonl
    from agoranet.tuning.housestyle import write_house_style
    from agoranet.tuning.lora import train_adapter

    root = tmp_path_factory.mktemp("brief" if brief else "house")
    examples, digest = load_jsonl(write_house_style(root / "data.jsonl", brief=brief))
    train_adapter(examples, tiny_loaded, root / "adapter", data_sha256=digest)
    return root / "adapter"


@pytest.fixture(scope="session")
def house_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_loaded) -> Path:  # type: ignore[no-untyped-def]
    """A LoRA adapter trained on the sailor house style (a few seconds on CPU)."""
    return _train(tmp_path_factory, tiny_loaded, brief=False)


@pytest.fixture(scope="session")
def brief_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_loaded) -> Path:  # type: ignore[no-untyped-def]
    """A second adapter with a different style, for multi-adapter tests."""
    return _train(tmp_path_factory, tiny_loaded, brief=True)


# Under CI=true a skip means a required tool is missing (anvil, a dev dependency), and that
# fails the run: only what a CI machine can never have may skip there.
_OPTIONAL_IN_CI = ("CUDA", "GPU", "llamacpp", "llama-cpp-python", "AGORANET_TEST_GGUF")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() not in ("1", "true") or not report.skipped:
        return
    if getattr(report, "wasxfail", None) is not None:
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if not any(word in reason for word in _OPTIONAL_IN_CI):
        report.outcome = "failed"
        report.longrepr = f"CI=true and this test skipped (a required tool is missing): {reason}"
