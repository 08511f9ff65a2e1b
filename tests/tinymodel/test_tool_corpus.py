"""The tiny model's chat template and tool corpus (Hermes-style tool calls, issue #13)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jsonschema

from agoranet.engines.hf import load_model
from agoranet.engines.prompt import template_renders_tools
from agoranet.engines.toolparsers import HermesParser, detect_tool_parser, parse_tool_calls
from agoranet.tinymodel import TinySpec, build_tiny_model
from agoranet.tinymodel.template import CHAT_TEMPLATE, TOOL_TOKENS, render
from agoranet.tinymodel.toolcorpus import TOOLS, tool_samples

CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_time", "arguments": {"zone": "utc"}}}


def test_the_template_renders_tools_calls_and_results() -> None:
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert render(plain) == "<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n"
    text = render([{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Time?"},
                   {"role": "assistant", "content": None, "tool_calls": [CALL, CALL]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "noon"}],
                  [TOOLS["get_time"]])
    assert text.startswith("<|system|>\nBe brief.\nTools:\n<tools>\n"
                           + json.dumps(TOOLS["get_time"]["function"]) + "\n</tools><|end|>\n")
    assert text.count("<|system|>") == 1
    call = '<tool_call>{"name": "get_time", "arguments": {"zone": "utc"}}</tool_call>'
    assert f"<|assistant|>\n{call}{call}<|end|>\n" in text
    assert text.endswith("<|user|>\n<tool_response>\nnoon\n</tool_response><|end|>\n")
    assert detect_tool_parser(CHAT_TEMPLATE) == "hermes"


def test_the_corpus_is_seeded_and_its_calls_fit_their_tools() -> None:
    samples = list(tool_samples(400, seed=2))
    assert [render(s.messages, s.tools) for s in samples[:20]] == \
        [render(s.messages, s.tools) for s in list(tool_samples(20, seed=2))]
    kinds: Counter[str] = Counter()
    for sample in samples:
        offered = {t["function"]["name"]: t["function"]["parameters"] for t in sample.tools}
        calls = [c for m in sample.messages for c in m.get("tool_calls") or []]
        for call in calls:
            function = call["function"]
            jsonschema.validate(function["arguments"], offered[function["name"]])
        answer = sample.messages[-1]
        kinds["parallel" if len(calls) == 2 else "result" if answer["content"] and calls
              else "call" if calls else "plain"] += 1
        # What the model learns to write is what the hermes parser reads back.
        if answer.get("tool_calls"):
            text = render([answer]).removeprefix("<|assistant|>\n").removesuffix("<|end|>\n")
            content, parsed = parse_tool_calls(HermesParser(offered), text)
            assert content == ""
            assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                    for c in parsed] == [(c["function"]["name"], c["function"]["arguments"])
                                         for c in answer["tool_calls"]]
    assert min(kinds.values()) > 30, kinds


def test_a_built_model_has_whole_tool_tokens_and_renders_tools(tmp_path: Path) -> None:
    spec = TinySpec(steps=1, dialogues=200, tool_dialogues=100, hidden_size=32,
                    intermediate_size=64, num_heads=2, num_kv_heads=1, num_layers=1,
                    vocab_size=400)
    build_tiny_model(tmp_path / "m", spec)
    tokenizer = load_model(str(tmp_path / "m")).tokenizer
    for token in TOOL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=True) == token
    assert template_renders_tools(tokenizer)
    assert detect_tool_parser(tokenizer.chat_template) == "hermes"
    meta = json.loads((tmp_path / "m" / "agoranet-tiny.json").read_text())
    assert meta["tool_call_parser"] == "hermes"
