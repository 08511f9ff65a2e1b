"""``agoranet node`` refuses an engine option the chosen engine would ignore.

The table the check reads (:data:`agoranet.cli.engine_options.ENGINE_OPTIONS`) is compared
with the built-in engines' own constructors, so it cannot drift from what they take.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from clirun import assert_one_line_error, run_inprocess

from agoranet.cli.engine_options import ENGINE_OPTIONS, check_engine_options
from agoranet.config import NodeSettings
from agoranet.engines.hf import TransformersEngine
from agoranet.engines.llamacpp import LlamaCppEngine
from agoranet.engines.upstream import UpstreamEngine
from agoranet.engines.vllm import VllmEngine
from agoranet.errors import ConfigError

ENGINES = {"transformers": TransformersEngine, "vllm": VllmEngine,
           "llamacpp": LlamaCppEngine, "upstream": UpstreamEngine}
# NodeSettings field -> the engine's keyword for it, where the names differ.
KEYWORD = {"upstream_url": "base_url", "upstream_api_key": "api_key",
           "max_adapters": "adapters_dir"}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_the_table_names_exactly_the_options_each_engine_takes(engine: str) -> None:
    takes = set(inspect.signature(ENGINES[engine]).parameters)
    for field, (_, engines) in ENGINE_OPTIONS.items():
        assert (KEYWORD.get(field, field) in takes) is (engine in engines), (engine, field)


@pytest.mark.parametrize(("engine", "options", "named"), [
    ("transformers", {"gpu_memory_utilization": 0.5}, "--gpu-memory-utilization"),
    ("upstream", {"upstream_url": "http://127.0.0.1:1", "device": "cpu"}, "--device"),
    ("vllm", {"batching": False}, "--no-batching"),
    ("llamacpp", {"max_active": 2, "dtype": "float16"}, "AGORANET_NODE_DTYPE, --max-active"),
])
def test_an_option_the_engine_ignores_is_refused(engine: str, options: dict[str, object],
                                                 named: str) -> None:
    with pytest.raises(ConfigError, match=f"the {engine} engine does not use {named}:"):
        check_engine_options(NodeSettings(engine=engine, **options))


@pytest.mark.parametrize(("engine", "options"), [
    ("transformers", {"device": "cpu", "max_active": 2, "batching": False}),
    ("upstream", {"upstream_url": "http://127.0.0.1:1"}),
    ("vllm", {"gpu_memory_utilization": 0.5, "max_adapters": 2}),
    ("llamacpp", {"max_queue": 4}),
    ("a-plug-in", {"gpu_memory_utilization": 0.5}),  # a plug-in's options are its own
])
def test_options_the_engine_uses_or_left_at_their_defaults_pass(
        engine: str, options: dict[str, object]) -> None:
    check_engine_options(NodeSettings(engine=engine, **options))


def test_the_command_says_so_before_loading_anything(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("AGORANET_HOME", str(tmp_path))
    result = run_inprocess(capsys, monkeypatch, "node", "--model", str(tmp_path / "none"),
                           "--port", "0", "--gpu-memory-utilization", "0.5")
    assert_one_line_error(result, "the transformers engine does not use "
                                  "--gpu-memory-utilization")
