"""``agoranet tools serve --schemes``: the schemes a seller takes, checked before anything.

A name no scheme is registered under (or none at all) is a one-line error before the
wallet is unlocked or the chain asked; the on-chain use (``--schemes exact``) is in
tests/integration/test_tool_exact_market.py.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from agoranet.cli.main import cli
from agoranet.errors import ConfigError


@pytest.mark.parametrize("schemes", ["bogus", "exact,bogus", " , "])
def test_an_unknown_scheme_is_refused_before_the_wallet(schemes: str) -> None:
    result = CliRunner().invoke(cli, [
        "tools", "serve", "agoranet.testing.tool_kit:tools", "--schemes", schemes,
        "--port", "0", "--keystore", "/nonexistent/keystore.json"])
    assert isinstance(result.exception, ConfigError)  # (main() prints it as one line)
    message = str(result.exception)
    assert "--schemes" in message and "batch-settlement, exact" in message
    assert "keystore" not in message.lower()
