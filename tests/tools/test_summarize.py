"""The ``summarize`` example tool: its price covers the inference it buys, plus a margin.

The price is quoted from the text before the call: the most its inference may cost
(prompt bounded by its UTF-8 bytes plus the chat template's overhead, the summary by
SUMMARY_TOKENS, at the dearest prices the tool buys at), a margin on that, a fee. The
bound is checked here against the tiny model's real tokenizer and chat template. The
tool buying through its seller's gateway, paid on both hops, is
tests/integration/test_demo_trade.py.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from agoranet.errors import ConfigError, InvalidRequestError, ToolFailedError
from agoranet.market import TokenPrices, cost
from agoranet.tools.examples.summarize import (
    INSTRUCTION,
    MAX_TEXT_CHARS,
    PROMPT_OVERHEAD_TOKENS,
    SUMMARY_TOKENS,
    SummarizeSettings,
    from_env,
    summarize_tools,
)

TEXTS = ["a", "Maya went to the market and bought apples.", "ÿ😀 zzqx " * 40,
         "The cat sat in the garden. " * 50]


def test_the_price_covers_the_worst_inference_plus_margin_and_fee() -> None:
    settings = SummarizeSettings("http://127.0.0.1:1/v1", "k", max_price_in=4_000_000,
                                 max_price_out=12_000_000, margin_percent=20, fee=100)
    prices = TokenPrices(4_000_000, 12_000_000)
    for text in TEXTS:
        prompt = len(INSTRUCTION.encode()) + len(text.encode()) + PROMPT_OVERHEAD_TOKENS
        bound = cost(prices, prompt, SUMMARY_TOKENS)
        assert settings.inference_bound(text) == bound
        assert settings.price({"text": text}) == bound + -(-bound * 20 // 100) + 100
    free = SummarizeSettings("u", "k", max_price_in=0, max_price_out=0, margin_percent=50,
                             fee=7)
    assert free.price({"text": "x"}) == 7
    # a longer text never costs less
    prices_by_length = [settings.price({"text": "x" * n}) for n in range(1, 200)]
    assert prices_by_length == sorted(prices_by_length)


def test_the_prompt_bound_holds_for_the_tiny_model(tiny_model: Path) -> None:
    """The real chat template and tokenizer: no prompt has more tokens than priced."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    for text in [*TEXTS, "\u00e9" * MAX_TEXT_CHARS]:
        ids = tokenizer.apply_chat_template(
            [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}],
            add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        assert len(ids) <= len(INSTRUCTION.encode()) + len(text.encode()) + \
            PROMPT_OVERHEAD_TOKENS, text[:40]


def test_the_tool_states_its_most_and_refuses_longer_texts_before_pricing() -> None:
    tool = next(iter(summarize_tools(SummarizeSettings("http://127.0.0.1:1/v1", "k"))))
    assert tool.name == "summarize" and tool.max_price is not None
    longest = "\U0001F600" * MAX_TEXT_CHARS  # four UTF-8 bytes each: the dearest text
    assert tool.price_of(tool.validate({"text": longest})) == tool.max_price
    for bad in ({"text": ""}, {"text": "x" * (MAX_TEXT_CHARS + 1)}, {"text": 5},
                {"text": "x", "model": "other"}):
        with pytest.raises(InvalidRequestError):
            tool.validate(bad)
    assert tool.output_schema is not None
    assert set(tool.output_schema["properties"]) == {"summary", "inference"}


def test_a_gateway_that_does_not_answer_fails_the_call_uncharged() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tool = next(iter(summarize_tools(SummarizeSettings(f"http://127.0.0.1:{port}/v1", "k"))))
    with pytest.raises(ToolFailedError, match="nothing was charged"):
        asyncio.run(tool.run(tool.validate({"text": "hello"})))


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KEY", "GATEWAY", "MODEL", "MAX_PRICE_IN", "MAX_PRICE_OUT", "FEE",
                 "MARGIN_PERCENT"):
        monkeypatch.delenv(f"AGORANET_SUMMARIZE_{name}", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="AGORANET_SUMMARIZE_KEY"):
        from_env()
    monkeypatch.setenv("OPENAI_API_KEY", "agn-x")
    monkeypatch.setenv("AGORANET_SUMMARIZE_FEE", "lots")
    with pytest.raises(ConfigError, match="AGORANET_SUMMARIZE_FEE must be an integer"):
        from_env()
    monkeypatch.setenv("AGORANET_SUMMARIZE_FEE", "-1")
    with pytest.raises(ConfigError, match="fee must be a non-negative integer"):
        from_env()
    monkeypatch.setenv("AGORANET_SUMMARIZE_FEE", "0")
    monkeypatch.setenv("AGORANET_SUMMARIZE_MAX_PRICE_IN", "0")
    monkeypatch.setenv("AGORANET_SUMMARIZE_MAX_PRICE_OUT", "0")
    tool = next(iter(from_env()))
    assert tool.price_of({"text": "anything"}) == 0


def test_a_key_file_is_read_at_each_call(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A key minted (or rotated) after the server started is the one spent with."""
    path = tmp_path / "summarize.key"
    settings = SummarizeSettings("http://127.0.0.1:1/v1", "", key_file=path)
    with pytest.raises(ToolFailedError, match="cannot read its gateway key"):
        settings.key()
    path.write_text("agn-first\n")
    assert settings.key() == "agn-first"
    path.write_text("agn-rotated\n")
    assert settings.key() == "agn-rotated"
    assert SummarizeSettings("u", "agn-given", key_file=path).key() == "agn-given"
    monkeypatch.delenv("AGORANET_SUMMARIZE_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AGORANET_SUMMARIZE_KEY_FILE", str(path))
    assert len(from_env()) == 1
