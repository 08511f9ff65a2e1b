"""The test-only wrappers are picked by name: chaos specs, and the hooks the test-only node
hands the production node (which itself has none)."""

from __future__ import annotations

import pytest

from agoranet.errors import ConfigError
from agoranet.node.hooks import NodeHooks
from agoranet.testing.chaos import ChaosMiddleware, chaos_middleware
from agoranet.testing.node import wrapper_hooks
from agoranet.testing.stall import StallMiddleware


def test_chaos_is_made_by_name() -> None:
    delay = chaos_middleware("delay:40")
    assert delay.cls is ChaosMiddleware and delay.kwargs == {"delay_ms": 40}
    cut = chaos_middleware("cut:3/2")
    assert cut.cls is ChaosMiddleware and cut.kwargs == {"fail_after": 3, "fail_every": 2}
    assert chaos_middleware("cut:5").kwargs == {"fail_after": 5, "fail_every": 1}
    stall = chaos_middleware("stall:0")
    assert stall.cls is StallMiddleware and stall.kwargs == {"after": 0}


@pytest.mark.parametrize(("spec", "needle"), [
    ("slow:3", "unknown chaos 'slow'"), ("delay", "needs an argument"),
    ("cut:0", "not a whole number >= 1"), ("delay:-1", "not a whole number >= 0"),
    ("stall:x", "not a whole number"),
])
def test_bad_chaos_is_a_config_error(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        chaos_middleware(spec)


def test_the_production_node_has_no_hooks_and_the_test_only_node_applies_them() -> None:
    plain = NodeHooks()
    assert plain.create_engine is None and plain.open_ledger is None and not plain.middleware
    assert wrapper_hooks() == plain
    hooks = wrapper_hooks(chaos_delay_ms=10, chaos_fail_after=4, chaos_fail_every=2,
                          chaos_stall_after=3, cheat="int4", cheat_payments="resync")
    assert [(m.cls, m.kwargs) for m in hooks.middleware] == [
        (ChaosMiddleware, {"delay_ms": 10}),
        (ChaosMiddleware, {"fail_after": 4, "fail_every": 2}),
        (StallMiddleware, {"after": 3})]
    assert hooks.create_engine is not None and hooks.open_ledger is not None
    with pytest.raises(ConfigError, match="wraps the transformers engine"):
        hooks.engine("upstream", base_url="http://127.0.0.1:9/v1")
