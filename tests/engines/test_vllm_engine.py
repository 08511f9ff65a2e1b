"""The vllm engine.

Everywhere: the pure mapping of a request onto vLLM (sampling parameters, the output
grammar as EBNF, logprobs, adapter ids), the loop bridge, the errors without the extra or
a GPU, and the engine's wiring against a scripted stand-in for vLLM's ``AsyncLLMEngine``
(``fake_vllm``: a unit test of the engine's logic, not of vLLM).

With vLLM, a CUDA GPU and ``AGORANET_VLLM_MODEL`` (a model directory, e.g. models/tiny):
a real ``agoranet node --engine vllm`` process answers a chat, a stream, a JSON-schema
answer and (on the tiny model) a LoRA adapter, and its greedy answers pass the audit.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xgrammar as xgr
from xgrammar.testing import _is_grammar_accept_string

from agoranet.engines.base import Delta, Finish, GenerationRequest, Message, collect
from agoranet.engines.loop_thread import LoopThread
from agoranet.engines.registry import available_engines, create_engine
from agoranet.engines.structured import join_tool_calls
from agoranet.engines.toolparsers import HermesParser, Llama3JsonParser
from agoranet.engines.vllm_params import (
    BANNED_BIAS,
    LoraIds,
    finish_reason,
    plan_output,
    sampling_kwargs,
    token_logprobs,
)
from agoranet.errors import EngineError, InvalidRequestError, ModelLoadError
from agoranet.tuning.adapter import adapter_model_name, pack_adapter, read_adapter
from helpers import free_port

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


VLLM_MODEL = os.environ.get("AGORANET_VLLM_MODEL")
WEATHER = {"type": "function", "function": {
    "name": "weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}}
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"], "additionalProperties": False}


def chat(**fields: Any) -> GenerationRequest:
    return GenerationRequest(model="tiny", messages=(Message("user", "Hi"),), **fields)


# ------------------------------------------------------------- sampling parameters


def test_sampling_parameters_carry_every_field_that_changes_the_answer() -> None:
    kwargs = sampling_kwargs(chat(max_tokens=7, temperature=0.3, top_p=0.9, seed=42,
                                  stop=("END",), logprobs=True, top_logprobs=3,
                                  ignore_eos=True), banned=(5, 9))
    assert kwargs == {"n": 1, "temperature": 0.3, "top_p": 0.9, "seed": 42, "max_tokens": 7,
                      "stop": ["END"], "ignore_eos": True, "skip_special_tokens": True,
                      "logprobs": 3, "logit_bias": {5: BANNED_BIAS, 9: BANNED_BIAS}}
    plain = sampling_kwargs(chat(max_tokens=3, temperature=0.0))
    assert plain["logprobs"] is None and plain["stop"] is None and plain["logit_bias"] is None
    assert plain["temperature"] == 0.0 and plain["seed"] is None
    # logprobs without top alternatives: the chosen token's only (vLLM's logprobs=0)
    assert sampling_kwargs(chat(logprobs=True))["logprobs"] == 0
    assert sampling_kwargs(chat(stop=("a",)), stop=("a", "</tool_call>"))["stop"] == \
        ["a", "</tool_call>"]


def test_commitments_are_refused_with_a_400() -> None:
    with pytest.raises(InvalidRequestError, match="commitments") as caught:
        sampling_kwargs(chat(commitments=True))
    assert caught.value.param == "agoranet.commitments"


# ------------------------------------------------------------------ output plans


def accepts(grammar: str, text: str) -> bool:
    return bool(_is_grammar_accept_string(xgr.Grammar.from_ebnf(grammar), text))


def test_plain_text_needs_no_grammar() -> None:
    plan = plan_output(chat(), None, False, "tiny")
    assert plan.grammar is None and not plan.tool_names and not plan.auto


def test_a_json_schema_becomes_the_same_bounded_grammar_as_the_transformers_engine() -> None:
    form = {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}}
    plan = plan_output(chat(response_format=form), None, False, "tiny")
    assert plan.grammar is not None and not plan.tool_names
    assert accepts(plan.grammar, '{"city": "Paris"}')
    assert not accepts(plan.grammar, '{ "city":"Paris"}')  # no free whitespace
    assert not accepts(plan.grammar, '{"city": "' + "x" * 21 + '"}')  # maxLength kept
    assert not accepts(plan.grammar, '{"town": "Paris"}')
    anything = plan_output(chat(response_format={"type": "json_object"}), None, False, "tiny")
    assert anything.grammar is not None and accepts(anything.grammar, '{"a": [1, 2]}')


def test_an_unenforceable_schema_is_a_400_naming_its_place() -> None:
    schema = {"type": "object", "oneOf": [{"type": "object"}]}
    form = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(InvalidRequestError, match="oneOf") as caught:
        plan_output(chat(response_format=form), None, False, "tiny")
    assert caught.value.param == "response_format.json_schema.schema"


def test_a_named_function_is_its_arguments_alone() -> None:
    choice = {"type": "function", "function": {"name": "weather"}}
    plan = plan_output(chat(tools=(WEATHER, TIME), tool_choice=choice), None, False, "tiny")
    assert plan.tool_names == ("weather",) and not plan.wrapped
    assert plan.grammar is not None and accepts(plan.grammar, '{"city": "Oslo"}')


def test_required_calls_are_written_in_the_models_format_or_as_json_objects() -> None:
    request = chat(tools=(WEATHER, TIME), tool_choice="required")
    hermes = plan_output(request, HermesParser, True, "tiny")
    assert hermes.wrapped and hermes.parser is HermesParser
    assert hermes.tool_names == ("weather", "time") and hermes.grammar is not None
    one = (HermesParser.call_before + '{"name": "weather", "arguments": {"city": "Oslo"}}'
           + HermesParser.call_after)
    assert accepts(hermes.grammar, one)
    assert accepts(hermes.grammar, one + HermesParser.call_separator + one)
    plain = plan_output(request, None, False, "tiny")  # no parser: JSON objects, llama3_json
    assert plain.wrapped and plain.parser is Llama3JsonParser
    single = plan_output(chat(tools=(WEATHER, TIME), tool_choice="required",
                              parallel_tool_calls=False), None, False, "tiny")
    assert not single.wrapped and single.grammar is not None
    assert accepts(single.grammar, '{"name": "time", "arguments": {}}')


def test_auto_needs_a_parser_and_a_template_that_shows_tools() -> None:
    request = chat(tools=(WEATHER,))
    with pytest.raises(InvalidRequestError, match="--tool-call-parser") as caught:
        plan_output(request, None, True, "tiny")
    assert caught.value.param == "tool_choice"
    with pytest.raises(InvalidRequestError, match="chat template"):
        plan_output(request, HermesParser, False, "tiny")
    plan = plan_output(request, HermesParser, True, "tiny")
    assert plan.auto and plan.grammar is None and plan.parser is HermesParser


@pytest.mark.parametrize(("fields", "param"), [
    ({"ignore_eos": True}, "ignore_eos"),
    ({"continue_final_message": True, "add_generation_prompt": False},
     "continue_final_message"),
])
def test_what_a_grammar_cannot_honour_is_a_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        plan_output(chat(response_format={"type": "json_object"}, **fields), None, False, "t")
    assert caught.value.param == param
    forced = {"type": "function", "function": {"name": "weather"}}
    with pytest.raises(InvalidRequestError) as stopped:
        plan_output(chat(tools=(WEATHER,), tool_choice=forced, stop=("x",)), None, False, "t")
    assert stopped.value.param == "stop"


# ----------------------------------------------------------------- vLLM's outputs


def lp(logprob: float, rank: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(logprob=logprob, rank=rank)


def test_logprobs_keep_token_ids_and_the_top_alternatives_in_rank_order() -> None:
    steps = [{7: lp(-0.1, 1), 3: lp(-2.5, 2)}, {4: lp(-3.0, 5), 8: lp(-0.2, 1), 2: lp(-1.0, 2)}]
    tokens = token_logprobs([7, 4], steps, 2, lambda i: f"t{i}")
    assert [(t.token, t.logprob, t.token_id, t.token_bytes) for t in tokens] == \
        [("t7", -0.1, 7, b"t7"), ("t4", -3.0, 4, b"t4")]
    assert [name for name, _, _ in tokens[1].top] == ["t8", "t2"]  # the chosen one ranks 5th
    assert tokens[0].top == (("t7", -0.1, b"t7"), ("t3", -2.5, b"t3"))
    assert token_logprobs([7], [{7: lp(-0.1, 1)}], 0, str)[0].top == ()
    assert token_logprobs([1], None, 0, str) == ()
    with pytest.raises(EngineError):
        token_logprobs([1, 2], [{1: lp(0.0, 1)}], 0, str)
    with pytest.raises(EngineError):
        token_logprobs([1], [{2: lp(0.0, 1)}], 0, str)


def test_finish_reasons() -> None:
    assert finish_reason("stop") == "stop" and finish_reason("length") == "length"
    with pytest.raises(EngineError, match="abort"):
        finish_reason("abort")


def test_adapter_ids_become_stable_small_integers() -> None:
    ids = LoraIds()
    assert [ids("a" * 64), ids("b" * 64), ids("a" * 64)] == [1, 2, 1]


# --------------------------------------------------------------------- loop bridge


async def test_the_loop_bridge_streams_raises_and_cancels_the_producer() -> None:
    loop = LoopThread("test-loop")
    cancelled = threading.Event()
    producer_loops: set[int] = set()

    async def numbers(stop_after: int | None) -> AsyncIterator[int]:
        producer_loops.add(id(asyncio.get_running_loop()))
        for i in range(3):
            yield i
        if stop_after is not None:
            raise ValueError("boom")
        try:
            await asyncio.Event().wait()  # a generation that would go on
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        assert await loop.acall(asyncio.sleep(0, "done")) == "done"
        with pytest.raises(ValueError, match="boom"):
            assert [i async for i in loop.iterate(lambda: numbers(3))] == [0, 1, 2]
        stream = loop.iterate(lambda: numbers(None))
        assert [await anext(stream) for _ in range(3)] == [0, 1, 2]
        await stream.aclose()  # type: ignore[attr-defined]
        assert await asyncio.to_thread(cancelled.wait, 30)
        assert producer_loops == {id(loop.loop)} != {id(asyncio.get_running_loop())}
    finally:
        loop.close()


# ----------------------------------------------------- without the extra or a GPU


def test_vllm_is_a_known_engine() -> None:
    assert "vllm" in available_engines()


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed (a GPU machine)")
def test_without_the_extra_the_error_says_what_to_install() -> None:
    with pytest.raises(ModelLoadError, match=r"pip install 'agoranet\[vllm\]'"):
        create_engine("vllm", model="models/tiny")


@pytest.mark.skipif(_cuda(), reason="this machine has a CUDA GPU")
def test_without_a_gpu_the_error_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    with pytest.raises(ModelLoadError, match="vLLM needs a CUDA GPU"):
        create_engine("vllm", model="models/tiny")
    with pytest.raises(ModelLoadError, match="'cpu' is not one"):
        create_engine("vllm", model="models/tiny", device="cpu")


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed (a GPU machine)")
def test_the_node_command_stops_with_the_hint(tiny_model: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agoranet", "node", "--engine", "vllm", "--free",
         "--model", str(tiny_model), "--port", str(free_port())],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "agoranet[vllm]" in done.stderr and "Traceback" not in done.stderr + done.stdout


# --------------------------------------- the engine's wiring, over a stand-in for vLLM


class FakeLLM:
    """Plays vLLM's AsyncLLMEngine: streams ``script`` (token ids) as delta outputs, one
    token each, up to ``max_tokens``; records each request; an abandoned one is aborted."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.model_config = types.SimpleNamespace(max_model_len=256)
        self.script: list[int] = tokenizer("the sea is calm today",
                                           add_special_tokens=False)["input_ids"]
        self.hang_after: int | None = None
        self.requests: list[tuple[Any, Any, str, Any]] = []
        self.aborted = threading.Event()
        self.closed = False

    async def generate(self, prompt: Any, params: Any, request_id: str, *,
                       lora_request: Any = None) -> AsyncIterator[Any]:
        self.requests.append((prompt, params, request_id, lora_request))
        kw = params.kwargs
        assert kw["n"] == 1 and kw["output_kind"] == "DELTA"
        count = min(kw["max_tokens"], len(self.script))
        try:
            for index, token in enumerate(self.script[:count]):
                if self.hang_after is not None and index == self.hang_after:
                    await asyncio.Event().wait()
                last = index == count - 1
                logprobs = None
                if kw["logprobs"] is not None:
                    logprobs = [{token: lp(-0.25, 1), (token + 1) % 50: lp(-1.5, 2)}]
                yield types.SimpleNamespace(finished=last, outputs=[types.SimpleNamespace(
                    token_ids=[token], text=self.tokenizer.decode([token]), logprobs=logprobs,
                    finish_reason=("length" if count == kw["max_tokens"] else "stop")
                    if last else None)])
        except asyncio.CancelledError:
            self.aborted.set()
            raise

    def shutdown(self) -> None:
        self.closed = True


class Recorded:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Iterator[dict[str, Any]]:
    """``vllm`` as a stand-in module, a "GPU" for the check; yields what it recorded."""
    import torch
    from transformers import AutoTokenizer

    seen: dict[str, Any] = {"llm": FakeLLM(AutoTokenizer.from_pretrained(tiny_model))}

    class Engine:
        @staticmethod
        def from_engine_args(args: Recorded) -> FakeLLM:
            seen["args"] = args.kwargs
            seen["loop"] = asyncio.get_running_loop()
            return seen["llm"]  # type: ignore[no-any-return]

    root = types.ModuleType("vllm")
    root.AsyncEngineArgs = Recorded  # type: ignore[attr-defined]
    root.AsyncLLMEngine = Engine  # type: ignore[attr-defined]
    params = types.ModuleType("vllm.sampling_params")
    params.SamplingParams = Recorded  # type: ignore[attr-defined]
    params.StructuredOutputsParams = Recorded  # type: ignore[attr-defined]
    params.RequestOutputKind = types.SimpleNamespace(DELTA="DELTA")  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = Recorded  # type: ignore[attr-defined]
    for name, module in {"vllm": root, "vllm.sampling_params": params,
                         "vllm.lora": types.ModuleType("vllm.lora"),
                         "vllm.lora.request": lora}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    yield seen


async def test_the_engine_maps_requests_streams_and_counts(
        fake_vllm: dict[str, Any], tiny_model: Path, tmp_path: Path) -> None:
    engine = create_engine("vllm", model=str(tiny_model), served_model_name="tiny",
                           max_active=3, adapters_dir=tmp_path / "adapters",
                           gpu_memory_utilization=0.5)
    llm: FakeLLM = fake_vllm["llm"]
    try:
        args = fake_vllm["args"]
        assert args["max_num_seqs"] == 3 and args["gpu_memory_utilization"] == 0.5
        assert args["enable_lora"] is True and args["model"] == str(tiny_model.resolve())
        info = engine.models()[0]
        assert info.name == "tiny" and info.context_length == 256
        assert info.sampler is None and info.commitments is None and info.model_sha256
        assert {"tools", "structured_output", "logprobs"} <= info.capabilities

        request = chat(max_tokens=3, temperature=0.0, logprobs=True, top_logprobs=1, seed=5)
        prepared = await engine.prepare(request)
        text, tokens, finish = await collect(engine.stream(prepared))
        prompt, params, _, lora_request = llm.requests[-1]
        assert prompt == {"prompt_token_ids": prepared.payload.ids}  # type: ignore[attr-defined]
        assert prepared.prompt_tokens == len(prompt["prompt_token_ids"])
        assert params.kwargs["seed"] == 5 and params.kwargs["logprobs"] == 1
        assert params.kwargs["structured_outputs"] is None and lora_request is None
        assert finish == Finish("length", prepared.prompt_tokens, 3)
        assert [t.token_id for t in tokens] == llm.script[:3]
        assert text == llm.tokenizer.decode(llm.script[:3])
        assert all(len(t.top) == 1 for t in tokens)
        whole = await collect(engine.stream(await engine.prepare(chat(max_tokens=50))))
        assert whole[2].reason == "stop" and whole[2].completion_tokens == len(llm.script)
        assert engine.stats()["completed"] == 2 and engine.stats()["active"] == 0
        assert engine.stats()["generated_tokens"] == 3 + len(llm.script)

        # The node's max_tokens (set after prepare) is what vLLM gets.
        prepared = await engine.prepare(chat(max_tokens=1))
        import dataclasses
        longer = dataclasses.replace(prepared, request=dataclasses.replace(
            prepared.request, max_tokens=2))
        assert (await collect(engine.stream(longer)))[2].completion_tokens == 2
    finally:
        await engine.aclose()
    assert llm.closed


async def test_a_json_answer_goes_to_vllm_as_a_grammar(fake_vllm: dict[str, Any],
                                                        tiny_model: Path) -> None:
    engine = create_engine("vllm", model=str(tiny_model), served_model_name="tiny")
    llm: FakeLLM = fake_vllm["llm"]
    llm.script = llm.tokenizer('{"city": "Oslo"}', add_special_tokens=False)["input_ids"]
    try:
        form = {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}}
        text, _, finish = await collect(engine.stream(await engine.prepare(
            chat(max_tokens=40, response_format=form))))
        grammar = llm.requests[-1][1].kwargs["structured_outputs"].kwargs["grammar"]
        assert accepts(grammar, text) and json.loads(text) == {"city": "Oslo"}
        assert finish.reason == "stop"
        # A forced call, written in the model's format (the tiny model's is hermes), read
        # back by its parser and streamed as the call.
        parser = engine.tool_parser  # type: ignore[attr-defined]
        assert parser is HermesParser
        llm.script = llm.tokenizer(
            parser.call_before + '{"name": "weather", "arguments": {"city": "Oslo"}}'
            + parser.call_after, add_special_tokens=False)["input_ids"]
        choice = {"type": "function", "function": {"name": "weather"}}
        events = [e async for e in engine.stream(await engine.prepare(
            chat(max_tokens=40, tools=(WEATHER,), tool_choice=choice)))]
        calls = join_tool_calls(p for e in events if isinstance(e, Delta) for p in e.tool_calls)
        grammar = llm.requests[-1][1].kwargs["structured_outputs"].kwargs["grammar"]
        assert accepts(grammar, llm.tokenizer.decode(llm.script))
        assert [c["function"]["name"] for c in calls] == ["weather"]
        assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
        assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"
        # The tool-call openers are never sampled by a request that offers no tools.
        await collect(engine.stream(await engine.prepare(chat(max_tokens=2))))
        assert llm.requests[-1][1].kwargs["logit_bias"] == (
            dict.fromkeys(engine._call_openers, -100.0) or None)  # type: ignore[attr-defined]
    finally:
        await engine.aclose()


async def test_auto_tool_calls_are_parsed_from_free_text(fake_vllm: dict[str, Any],
                                                         tiny_model: Path) -> None:
    engine = create_engine("vllm", model=str(tiny_model), served_model_name="tiny")
    llm: FakeLLM = fake_vllm["llm"]
    llm.script = llm.tokenizer('<tool_call>{"name": "weather", "arguments": {"city": "Rome"}}'
                               '</tool_call>', add_special_tokens=False)["input_ids"]
    try:
        assert "tool_choice_auto" in engine.models()[0].capabilities
        events = [e async for e in engine.stream(await engine.prepare(
            chat(max_tokens=60, tools=(WEATHER,), parallel_tool_calls=False)))]
        kwargs = llm.requests[-1][1].kwargs
        assert kwargs["structured_outputs"] is None  # free text, parsed
        assert kwargs["stop"] == ["</tool_call>"] and kwargs["logit_bias"] is None
        calls = join_tool_calls(p for e in events if isinstance(e, Delta) for p in e.tool_calls)
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in calls] == [("weather", {"city": "Rome"})]
        assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"
    finally:
        await engine.aclose()


async def test_a_client_that_hangs_up_aborts_the_request(fake_vllm: dict[str, Any],
                                                         tiny_model: Path) -> None:
    engine = create_engine("vllm", model=str(tiny_model), served_model_name="tiny",
                           max_active=1, max_queue=0)
    llm: FakeLLM = fake_vllm["llm"]
    llm.hang_after = 2
    try:
        stream = engine.stream(await engine.prepare(chat(max_tokens=10)))
        assert isinstance(await anext(stream), Delta)
        from agoranet.errors import OverloadedError

        with pytest.raises(OverloadedError):  # one active, no queue: the next is a 429
            await anext(engine.stream(await engine.prepare(chat(max_tokens=1))))
        await stream.aclose()  # type: ignore[attr-defined]
        assert await asyncio.to_thread(llm.aborted.wait, 30)
        assert engine.stats()["cancelled"] == 1 and engine.stats()["active"] == 0
    finally:
        await engine.aclose()


async def test_adapters_go_to_vllm_as_lora_requests(fake_vllm: dict[str, Any],
                                                    tiny_model: Path, house_adapter: Path,
                                                    tmp_path: Path) -> None:
    engine = create_engine("vllm", model=str(tiny_model), served_model_name="tiny",
                           adapters_dir=tmp_path / "store")
    llm: FakeLLM = fake_vllm["llm"]
    try:
        added = engine.add_adapter(pack_adapter(house_adapter), 10**8)  # type: ignore[attr-defined]
        assert added.id == read_adapter(house_adapter).id
        name = adapter_model_name("tiny", added.id)
        await collect(engine.stream(await engine.prepare(
            GenerationRequest(model=name, messages=(Message("user", "Hi"),), max_tokens=2))))
        lora = llm.requests[-1][3]
        assert lora.args == (added.id, 1, str(added.path))
        from agoranet.errors import ModelNotFoundError

        with pytest.raises(ModelNotFoundError):
            await engine.prepare(GenerationRequest(model=adapter_model_name("tiny", "c" * 64),
                                                   prompt="x"))
        small = create_engine("vllm", model=str(tiny_model), served_model_name="tiny",
                              adapters_dir=tmp_path / "store", max_lora_rank=1)
        try:
            with pytest.raises(InvalidRequestError, match="rank"):
                await small.prepare(GenerationRequest(model=name, prompt="x"))
        finally:
            await small.aclose()
    finally:
        await engine.aclose()


# ------------------------------------------------------ a real vLLM on a CUDA GPU

gpu = pytest.mark.skipif(not (HAVE_VLLM and _cuda() and VLLM_MODEL),
                         reason="needs vLLM, a CUDA GPU and AGORANET_VLLM_MODEL")


@pytest.fixture(scope="module")
def vllm_node() -> Iterator[str]:
    from helpers import node_process

    assert VLLM_MODEL is not None
    # bfloat16, as the audit's reference loads on a GPU (load_model's "auto")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGORANET_NODE_DTYPE", "bfloat16")
        with node_process(["--engine", "vllm", "--model", VLLM_MODEL, "--served-model-name",
                           "m", "--free", "--gpu-memory-utilization", "0.3"],
                          timeout=600) as url:
            yield url


@gpu
@pytest.mark.gpu
@pytest.mark.timeout(900)
def test_a_vllm_node_chats_streams_and_answers_json(vllm_node: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=vllm_node, api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "Hello! How are you?"}]
    first = client.chat.completions.create(model="m", messages=messages,  # type: ignore[arg-type]
                                           max_tokens=16, temperature=0, logprobs=True)
    again = client.chat.completions.create(model="m", messages=messages,  # type: ignore[arg-type]
                                           max_tokens=16, temperature=0)
    assert first.usage is not None and first.usage.completion_tokens > 0
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].logprobs is not None
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
            model="m", messages=messages, max_tokens=16, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True}):
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == first.choices[0].message.content
    assert usage is not None and usage.completion_tokens == first.usage.completion_tokens
    answer = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Name a city."}],  # type: ignore[list-item]
        max_tokens=60, temperature=0.7, seed=3,
        response_format={"type": "json_schema",  # type: ignore[typeddict-item]
                         "json_schema": {"name": "c", "schema": CITY}})
    content = answer.choices[0].message.content or ""
    if answer.choices[0].finish_reason == "stop":
        jsonschema.validate(json.loads(content), CITY)
    assert answer.choices[0].finish_reason in ("stop", "length")


@gpu
@pytest.mark.gpu
@pytest.mark.timeout(900)
def test_a_vllm_node_serves_an_adapter_and_passes_greedy_audits(
        vllm_node: str, tiny_model: Path, house_adapter: Path, tiny_loaded: Any) -> None:
    import httpx

    from agoranet.verify.audit import audit_answer
    from agoranet.verify.node_audit import challenge

    if Path(VLLM_MODEL or "").resolve() != tiny_model.resolve():
        pytest.skip("the adapter and the audit reference are the tiny model's (GPU test)")
    root = vllm_node.removesuffix("/v1")
    put = httpx.post(f"{vllm_node}/adapters", content=pack_adapter(house_adapter),
                     params={"public": "true"}, timeout=120)
    assert put.status_code == 201, put.text
    ident = read_adapter(house_adapter).id
    body = {"messages": [{"role": "user", "content": "Where is the harbour?"}],
            "max_tokens": 40, "temperature": 0}
    base = httpx.post(f"{vllm_node}/chat/completions", json={**body, "model": "m"}, timeout=120)
    tuned = httpx.post(f"{vllm_node}/chat/completions",
                       json={**body, "model": adapter_model_name("m", ident)}, timeout=120)
    assert base.status_code == tuned.status_code == 200, tuned.text
    assert base.json()["choices"][0]["message"]["content"] != \
        tuned.json()["choices"][0]["message"]["content"]
    for i in range(0, 20, 2):  # greedy challenges: replayable by the reference
        request = challenge(i, f"Tell me about ship number {i}.", "m", 32)
        reply = httpx.post(f"{vllm_node}/chat/completions", timeout=120, json={
            "model": "m", "messages": [{"role": "user", "content": request.messages[0].content}],  # type: ignore[index]
            "max_tokens": 32, "temperature": 0, "logprobs": True}).json()
        steps = reply["choices"][0]["logprobs"]["content"]
        result = audit_answer(tiny_loaded, request, [s["token_id"] for s in steps],
                              [s["logprob"] for s in steps])
        assert not result.flagged, (i, result)
    assert httpx.get(f"{root}/health", timeout=30).json()["engine"] == "vllm"
