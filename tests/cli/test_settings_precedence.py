"""Command-line options over environment over defaults, for every money setting.

``agoranet node`` and ``agoranet gateway`` run for real through click up to the
point their settings are built (``serve`` / the gateway's ``build_service`` is
replaced by a catcher). A setting given only by its ``AGORANET_*`` variable must
hold: an option's default must never hide it (``AGORANET_GATEWAY_BUDGET=100``
once ran with no budget at all). A flag the user gives still wins, ``0`` included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from agoranet.cli.gateway import gateway as gateway_command
from agoranet.cli.main import cli
from agoranet.cli.node import node as node_command
from agoranet.config import GatewaySettings, NodeSettings

OUR_VARIABLES = ("AGORANET_NODE_", "AGORANET_GATEWAY_", "AGORANET_CHAIN_RPC_URL",
                 "AGORANET_UPSTREAM_API_KEY", "AGORANET_WALLET_KEYSTORE")


class _Caught(Exception):
    pass


def _run(monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str],
         target: str) -> Any:
    """Invoke ``agoranet ARGS`` with ``env``; the settings ``target`` was called with."""
    seen: list[Any] = []

    def catch(settings: BaseModel, *_a: object, **_kw: object) -> None:
        seen.append(settings)
        raise _Caught

    monkeypatch.setattr(target, catch)
    for key in [k for k in os.environ if k.startswith(OUR_VARIABLES)]:
        monkeypatch.delenv(key)
    result = CliRunner().invoke(cli, args, env=env)
    assert isinstance(result.exception, _Caught), (result.output, result.exception)
    return seen[0]


def node_settings_of(monkeypatch: pytest.MonkeyPatch, args: list[str],
                     env: dict[str, str]) -> NodeSettings:
    settings = _run(monkeypatch, ["node", *args], env, "agoranet.cli.node.serve")
    assert isinstance(settings, NodeSettings)
    return settings


def gateway_settings_of(monkeypatch: pytest.MonkeyPatch, args: list[str],
                        env: dict[str, str]) -> GatewaySettings:
    settings = _run(monkeypatch, ["gateway", "--node", "http://127.0.0.1:1", *args], env,
                    "agoranet.gateway.app.build_service")
    assert isinstance(settings, GatewaySettings)
    return settings


# (setting, environment value, the value it must hold)
NODE_MONEY = [
    ("price_in", "1500", 1500),
    ("price_out", "2500", 2500),
    ("price_commitments", "300", 300),
    ("price_training", "4000", 4000),
    ("adapter_surcharge_in", "10", 10),
    ("adapter_surcharge_out", "20", 20),
    ("price_adapter_storage", "5000", 5000),
    ("min_deposit", "5000000", 5_000_000),
    ("withdraw_delay", "1800", 1800),
    ("claim_min_amount", "42", 42),
    ("claim_max_requests", "7", 7),
    ("claim_max_age", "60.5", 60.5),
    ("settle_interval", "0.5", 0.5),
    ("receipt_every", "4", 4),
    ("chain_state_ttl", "2.5", 2.5),
    ("chain_timeout_s", "1.5", 1.5),
    ("chain_stale_max_s", "45", 45.0),
    ("free", "true", True),
    ("rpc_url", "http://127.0.0.1:9999", "http://127.0.0.1:9999"),
]

GATEWAY_MONEY = [
    ("budget", "100", 100),
    ("budget", "0", 0),
    ("deposit", "777", 777),
    ("audit_share", "0.5", 0.5),
    ("audit_budget_share", "0.25", 0.25),
    ("audit_budget_floor", "9000", 9000),
    ("chain_timeout_s", "3", 3.0),
]


@pytest.mark.parametrize(("field", "raw", "expected"), NODE_MONEY)
def test_node_setting_from_env_holds(monkeypatch: pytest.MonkeyPatch, field: str, raw: str,
                                     expected: object) -> None:
    settings = node_settings_of(monkeypatch, [], {f"AGORANET_NODE_{field.upper()}": raw})
    assert getattr(settings, field) == expected


@pytest.mark.parametrize(("field", "raw", "expected"), GATEWAY_MONEY)
def test_gateway_setting_from_env_holds(monkeypatch: pytest.MonkeyPatch, field: str, raw: str,
                                        expected: object) -> None:
    settings = gateway_settings_of(monkeypatch, [], {f"AGORANET_GATEWAY_{field.upper()}": raw})
    assert getattr(settings, field) == expected


@pytest.mark.parametrize(("args", "env", "field", "expected"), [
    (["--price-in", "7"], {"AGORANET_NODE_PRICE_IN": "1500"}, "price_in", 7),
    (["--price-in", "0"], {"AGORANET_NODE_PRICE_IN": "1500"}, "price_in", 0),
    (["--price-out", "0"], {"AGORANET_NODE_PRICE_OUT": "2500"}, "price_out", 0),
    (["--price-commitments", "0"], {"AGORANET_NODE_PRICE_COMMITMENTS": "300"},
     "price_commitments", 0),
    (["--price-training", "0"], {"AGORANET_NODE_PRICE_TRAINING": "4000"}, "price_training", 0),
    (["--price-adapter-storage", "0"], {"AGORANET_NODE_PRICE_ADAPTER_STORAGE": "5000"},
     "price_adapter_storage", 0),
    (["--claim-min-amount", "0"], {"AGORANET_NODE_CLAIM_MIN_AMOUNT": "42"},
     "claim_min_amount", 0),
    (["--claim-max-requests", "3"], {"AGORANET_NODE_CLAIM_MAX_REQUESTS": "7"},
     "claim_max_requests", 3),
    (["--claim-max-age", "0"], {"AGORANET_NODE_CLAIM_MAX_AGE": "60"}, "claim_max_age", 0.0),
    (["--receipt-every", "0"], {"AGORANET_NODE_RECEIPT_EVERY": "4"}, "receipt_every", 0),
    (["--chain-state-ttl", "0"], {"AGORANET_NODE_CHAIN_STATE_TTL": "2.5"}, "chain_state_ttl",
     0.0),
    (["--chain-timeout", "0.25"], {"AGORANET_NODE_CHAIN_TIMEOUT_S": "3"}, "chain_timeout_s",
     0.25),
    (["--free"], {"AGORANET_NODE_FREE": "false"}, "free", True),
    (["--rpc-url", "http://127.0.0.1:1234"], {"AGORANET_NODE_RPC_URL": "http://127.0.0.1:9"},
     "rpc_url", "http://127.0.0.1:1234"),
])
def test_node_flag_beats_env(monkeypatch: pytest.MonkeyPatch, args: list[str],
                             env: dict[str, str], field: str, expected: object) -> None:
    assert getattr(node_settings_of(monkeypatch, args, env), field) == expected


@pytest.mark.parametrize(("args", "env", "field", "expected"), [
    (["--budget", "50"], {"AGORANET_GATEWAY_BUDGET": "100"}, "budget", 50),
    (["--budget", "0"], {"AGORANET_GATEWAY_BUDGET": "100"}, "budget", 0),
    (["--deposit", "5"], {"AGORANET_GATEWAY_DEPOSIT": "777"}, "deposit", 5),
    (["--audit-share", "0"], {"AGORANET_GATEWAY_AUDIT_SHARE": "0.5"}, "audit_share", 0.0),
    (["--audit-budget-share", "0"], {"AGORANET_GATEWAY_AUDIT_BUDGET_SHARE": "0.25"},
     "audit_budget_share", 0.0),
    (["--audit-budget-floor", "0"], {"AGORANET_GATEWAY_AUDIT_BUDGET_FLOOR": "9000"},
     "audit_budget_floor", 0),
])
def test_gateway_flag_beats_env(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                env: dict[str, str], field: str, expected: object) -> None:
    assert getattr(gateway_settings_of(monkeypatch, args, env), field) == expected


@pytest.mark.parametrize(("settings_of", "prefix"), [(node_settings_of, "AGORANET_NODE_"),
                                                    (gateway_settings_of, "AGORANET_GATEWAY_")])
def test_log_format_from_env_holds_and_the_flag_wins(
        monkeypatch: pytest.MonkeyPatch, settings_of: Any, prefix: str) -> None:
    env = {f"{prefix}LOG_FORMAT": "json"}
    assert settings_of(monkeypatch, [], env).log_format == "json"
    assert settings_of(monkeypatch, ["--log-format", "text"], env).log_format == "text"
    assert settings_of(monkeypatch, [], {}).log_format == "text"


def test_gateway_nodes_from_env_are_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _run(monkeypatch, ["gateway"],
                    {"AGORANET_GATEWAY_NODES": '["http://127.0.0.1:2"]'},
                    "agoranet.gateway.app.build_service")
    assert settings.nodes == ["http://127.0.0.1:2"]


def test_nothing_set_gives_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    node = node_settings_of(monkeypatch, [], {})
    assert node.model_dump() == NodeSettings().model_dump()
    gateway = gateway_settings_of(monkeypatch, [], {})
    assert gateway.model_dump() == GatewaySettings(nodes=["http://127.0.0.1:1"]).model_dump()


NOT_SETTINGS = {"no_adapters", "no_fine_tuning", "no_batching", "trust", "trust_lists"}
RENAMED = {"model_ref": "model", "ledger": "ledger_path", "node_urls": "nodes"}


@pytest.mark.parametrize(("command", "model"), [(node_command, NodeSettings),
                                                (gateway_command, GatewaySettings)])
def test_help_defaults_are_the_settings_defaults(command: click.Command,
                                                 model: type[BaseModel]) -> None:
    """Option defaults only show in --help now: each must be what the setting defaults to,
    and each option must name a setting (the settings ignore unknown names)."""
    ctx = click.Context(command)
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in NOT_SETTINGS:
            continue
        assert param.name is not None
        field = RENAMED.get(param.name, param.name)
        assert field in model.model_fields, f"--{param.name} sets no {model.__name__} field"
        default = model.model_fields[field].get_default(call_default_factory=True)
        shown = param.get_default(ctx)
        if param.multiple:
            given = shown if isinstance(shown, (list, tuple)) else ()  # unset: none
            assert list(given) == list(default), param.name
        else:
            assert shown == default, (param.name, shown, default)


def test_spend_reads_the_spend_log_named_in_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from agoranet.errors import ConfigError

    where = str(tmp_path / "elsewhere" / "spend.sqlite")
    monkeypatch.delenv("AGORANET_GATEWAY_SPEND_LOG", raising=False)
    result = CliRunner().invoke(cli, ["spend"], env={"AGORANET_GATEWAY_SPEND_LOG": where})
    assert isinstance(result.exception, ConfigError)
    assert where in str(result.exception)
