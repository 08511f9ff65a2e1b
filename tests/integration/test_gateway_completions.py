"""OpenAI's text completions (``POST /v1/completions``) and logprobs through the gateway,
with the official ``openai`` client over two real node processes: plain and streamed
answers equal to a direct call to a node at temperature 0 (text and logprobs, chat's
too), failover mid-answer (a node that cuts its streams), 400s for what the network does
not do, and a paid network on the dev chain whose money invariants hold afterwards."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import running_command
from agoranet.payments.wallet import create_keystore
from helpers import node_process, rigged_node_process

pytestmark = pytest.mark.slow

PROMPT = "In the morning, Nora"  # the tiny model goes on for 31 tokens
QUESTION: Any = [{"role": "user", "content": "Tell me a short story."}]
NODE = ["--no-fine-tuning", "--no-adapters"]
CUT_AFTER = 6  # the victim drops every stream after this many frames


def _policy(path: Path) -> Path:
    """A short ban, so the victim is asked again in the next test."""
    path.write_text(json.dumps({"ban_base_s": 0.2, "ban_cap_s": 0.5}))
    return path


@pytest.fixture(scope="module")
def network(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[str, str, str, Path]]:
    """The gateway's URL, the backup node's, the victim's (cheapest, cuts every stream
    after a few frames), and the gateway's spend log."""
    home = tmp_path_factory.mktemp("gw-completions")
    with node_process(["--model", str(tiny_model), *NODE, "--free", "--price-in", "500",
                       "--price-out", "900"]) as backup, \
            rigged_node_process(["--model", str(tiny_model), *NODE, "--free", "--price-in",
                                 "0", "--price-out", "0", "--chaos-fail-after",
                                 str(CUT_AFTER)]) as victim, \
            running_command(["gateway", "--open", "--spend-log", str(home / "spend.sqlite"),
                             "--policy", str(_policy(home / "policy.json")),
                             "--node", victim, "--node", backup]) as gateway:
        _wait_for_offers(gateway, 2)
        yield gateway, backup, victim, home / "spend.sqlite"


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def _wait_for_offers(gateway: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=30).json()
        if sum(bool(r["models"]) for r in rows["nodes"]) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError("the gateway never saw every node's offer")


def _wait_unbanned(gateway: str, url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=30).json()
        if not any(r["url"] == url and r["banned"] for r in rows["nodes"]):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} stayed banned")


def _logprobs(choices: list[Any]) -> dict[str, list[Any]]:
    """A text completion's logprobs, joined over the chunks of a stream (or one choice)."""
    joined: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                    "text_offset": []}
    for choice in choices:
        if choice.logprobs is None:
            continue
        for name, values in joined.items():
            values.extend(getattr(choice.logprobs, name) or [])
    return joined


def _streamed(stream: Any) -> tuple[str, list[Any], dict[str, Any] | None, str | None]:
    """A streamed text completion: text, choices, the gateway's summary, finish reason."""
    text, choices, summary, finish = "", [], None, None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.text
            choices.append(choice)
            finish = choice.finish_reason or finish
        summary = (chunk.model_extra or {}).get("agoranet") or summary
    return text, choices, summary, finish


def test_completions_plain_and_streamed_equal_a_direct_call_logprobs_too(
        network: tuple[str, str, str, Path]) -> None:
    gateway, backup, victim, _ = network
    via, direct = _client(gateway), _client(backup)
    only_backup = {"agoranet": {"deny": [victim]}}
    asked: Any = {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 0,
                  "logprobs": 3}
    plain = via.completions.create(**asked, extra_body=only_backup)
    reference = direct.completions.create(**asked)
    assert plain.object == "text_completion" and plain.id.startswith("cmpl-")
    assert plain.choices[0].text == reference.choices[0].text != ""
    assert plain.choices[0].finish_reason == reference.choices[0].finish_reason
    assert _logprobs(plain.choices) == _logprobs(reference.choices)
    assert plain.usage is not None and reference.usage is not None
    assert plain.usage.completion_tokens == reference.usage.completion_tokens == \
        len(_logprobs(plain.choices)["tokens"])
    assert plain.model_extra["agoranet"]["nodes"] == [backup]  # type: ignore[index]

    text, choices, summary, finish = _streamed(via.completions.create(
        **asked, stream=True, stream_options={"include_usage": True}, extra_body=only_backup))
    ref_text, ref_choices, _, ref_finish = _streamed(direct.completions.create(
        **asked, stream=True))
    assert text == ref_text == reference.choices[0].text and finish == ref_finish
    assert _logprobs(choices) == _logprobs(ref_choices)
    assert summary is not None and summary["nodes"] == [backup]

    echoed = via.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                    echo=True, extra_body=only_backup)
    assert echoed.choices[0].text == PROMPT + reference.choices[0].text
    text, _, _, _ = _streamed(via.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, echo=True, stream=True,
        extra_body=only_backup))
    assert text == PROMPT + reference.choices[0].text


def test_chat_logprobs_plain_and_streamed_equal_a_direct_call(
        network: tuple[str, str, str, Path]) -> None:
    gateway, backup, victim, _ = network
    via, direct = _client(gateway), _client(backup)
    asked: Any = {"model": "tiny", "messages": QUESTION, "max_tokens": 60, "temperature": 0,
                  "logprobs": True, "top_logprobs": 3}
    plain = via.chat.completions.create(**asked, extra_body={"agoranet": {"deny": [victim]}})
    reference = direct.chat.completions.create(**asked)
    got, want = plain.choices[0].logprobs, reference.choices[0].logprobs
    assert got is not None and want is not None and want.content
    assert [c.model_dump() for c in got.content or []] == \
        [c.model_dump() for c in want.content]
    assert all(len(c.top_logprobs) == 3 for c in want.content)
    assert want.content[-1].token == "<|end|>"  # a token without text: its logprobs too

    def joined(stream: Any) -> list[dict[str, Any]]:
        return [c.model_dump() for chunk in stream for choice in chunk.choices
                if choice.logprobs is not None for c in choice.logprobs.content or []]

    streamed = joined(via.chat.completions.create(
        **asked, stream=True, extra_body={"agoranet": {"deny": [victim]}}))
    assert streamed == joined(direct.chat.completions.create(**asked, stream=True))
    assert streamed == [c.model_dump() for c in want.content]


def test_a_node_cut_mid_answer_is_continued_by_the_next_plain_and_streamed(
        network: tuple[str, str, str, Path]) -> None:
    from agoranet.gateway.spendlog import SpendLog

    gateway, backup, victim, spend = network
    via = _client(gateway)
    asked: Any = {"model": "tiny", "prompt": PROMPT, "max_tokens": 24, "temperature": 0,
                  "logprobs": 2, "extra_body": {"agoranet": {"prefer": "cheapest"}}}
    healthy = _client(backup).completions.create(**{**asked, "extra_body": None})
    whole = healthy.choices[0].text
    _wait_unbanned(gateway, victim)
    text, choices, summary, _ = _streamed(via.completions.create(
        **asked, stream=True, stream_options={"include_usage": True}))
    assert text == whole
    assert summary is not None and summary["nodes"] == [victim, backup]
    assert summary["failovers"] == 1
    _continuous(_logprobs(choices), text)
    _wait_unbanned(gateway, victim)
    plain = via.completions.create(**asked)
    assert plain.choices[0].text == whole
    extra = plain.model_extra["agoranet"]  # type: ignore[index]
    assert extra["nodes"] == [victim, backup] and extra["failovers"] == 1
    assert plain.usage is not None and plain.usage.completion_tokens == 24
    _continuous(_logprobs(plain.choices), whole)
    rows = SpendLog(spend).rows(extra["request_id"])
    assert [(r.node, r.outcome) for r in rows] == [(victim, "partial"), (backup, "ok")]
    assert 0 < rows[0].completion_tokens < 24
    assert sum(r.completion_tokens for r in rows) == 24


def _continuous(logprobs: dict[str, list[Any]], text: str) -> None:
    """One token's logprobs for each of the answer's tokens, across both nodes, each
    ``text_offset`` where its token starts in the whole answer."""
    tokens, offsets = logprobs["tokens"], logprobs["text_offset"]
    assert "".join(tokens) == text
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert len(logprobs["token_logprobs"]) == len(tokens) == len(logprobs["top_logprobs"])


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"), ({"best_of": 3}, "best_of"), ({"suffix": " the end."}, "suffix"),
    ({"echo": True, "logprobs": 1}, "echo"), ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"), ({"logprobs": 9}, "logprobs"),
])
def test_what_the_network_does_not_do_is_a_400_naming_the_field(
        network: tuple[str, str, str, Path], extra: dict[str, Any], param: str) -> None:
    asked: Any = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        _client(network[0]).completions.create(**asked)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and error["message"]
    assert error["type"] == "invalid_request_error"


def test_a_keyed_gateway_charges_the_keys_budget_and_refuses_past_it(
        network: tuple[str, str, str, Path], tmp_path: Path) -> None:
    from keyed import keyed_gateway

    backup = network[1]
    with keyed_gateway(tmp_path, backup) as gw:
        with pytest.raises(openai.AuthenticationError):
            _client(gw.url).completions.create(model="tiny", prompt=PROMPT, max_tokens=4)
        agent = gw.mint(gw.owner, "agent", 1_000)
        client = openai.OpenAI(base_url=gw.url, api_key=agent, max_retries=0)
        answer = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8)
        summary = answer.model_extra["agoranet"]  # type: ignore[index]
        assert summary["amount"] > 0 and summary["nodes"] == [backup]
        text, _, streamed, _ = _streamed(client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=8, stream=True,
            stream_options={"include_usage": True}))
        assert text and streamed is not None
        shown = gw.key("agent")
        assert (shown["spent"], shown["reserved"]) == (
            summary["amount"] + streamed["amount"], 0)
        broke = gw.mint(gw.owner, "broke", 0)
        with pytest.raises(openai.APIStatusError) as caught:
            openai.OpenAI(base_url=gw.url, api_key=broke, max_retries=0).completions.create(
                model="tiny", prompt=PROMPT, max_tokens=8)
        assert caught.value.status_code == 429  # OpenAI's status for a spent quota
        assert caught.value.body["code"] == "insufficient_quota"  # type: ignore[index]
        assert gw.key("broke")["spent"] == 0


# ---------------------------------------------------------------- paid

PASSWORD = "gateway-completions-paid"


def _keystore(chain: DevChain, index: int, path: Path) -> Path:
    key = bytes.fromhex(chain.private_keys[index].removeprefix("0x"))
    create_keystore(path, PASSWORD, private_key=key, scrypt_n=2**10)
    return path


def test_paid_completions_with_a_failover_mid_answer_keep_the_money_invariants(
        chain: DevChain, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paid nodes: plain and streamed text completions, then two (streamed and plain) that
    the cheapest node cuts mid-answer (after a running receipt) and the next continues;
    every node that produced tokens is paid what it receipted, and after the nodes claim,
    the money invariants hold."""
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.config import ChainSettings
    from agoranet.gateway.spendlog import SpendLog
    from agoranet.payments.receipts import Receipt, verify_receipt
    from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot
    from agoranet.testing.settle import force_settlement

    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    before = chain_snapshot(w3, addresses, [chain.accounts[i] for i in (3, 4, 5)])
    ledgers = {3: tmp_path / "victim.sqlite", 4: tmp_path / "backup.sqlite"}
    spend_path = tmp_path / "gw" / "spend.sqlite"

    def paid(index: int, price_in: int, price_out: int) -> list[str]:
        return ["--model", str(tiny_model), *NODE, "--price-in", str(price_in),
                "--price-out", str(price_out), "--rpc-url", chain.rpc_url,
                "--keystore", str(_keystore(chain, index, tmp_path / f"n{index}.json")),
                "--ledger", str(ledgers[index]), "--receipt-every", "4"]

    with ExitStack() as stack:
        backup = stack.enter_context(node_process(paid(4, 400_000, 1_200_000)))
        # By far the cheapest (first even after failures), and cuts every stream after 12
        # frames (a few running receipts in, once its channel is open).
        victim = stack.enter_context(rigged_node_process(
            [*paid(3, 20_000, 60_000), "--chaos-fail-after", "12"]))
        gateway = stack.enter_context(running_command([
            "gateway", "--open", "--rpc-url", chain.rpc_url,
            "--keystore", str(_keystore(chain, 5, tmp_path / "gw.json")),
            "--deposit", "500000", "--budget", "400000", "--spend-log", str(spend_path),
            "--policy", str(_policy(tmp_path / "policy.json")),
            "--node", victim, "--node", backup]))
        _wait_for_offers(gateway, 2)
        via = _client(gateway)
        asked: Any = {"model": "tiny", "prompt": PROMPT, "max_tokens": 24, "temperature": 0}
        only_backup: Any = {"agoranet": {"deny": [victim]}}
        plain = via.completions.create(**asked, extra_body=only_backup)
        whole = plain.choices[0].text
        text, _, streamed, _ = _streamed(via.completions.create(
            **asked, stream=True, stream_options={"include_usage": True},
            extra_body=only_backup))
        assert text == whole and streamed is not None
        spend = SpendLog(spend_path)
        for summary in (plain.model_extra["agoranet"], streamed):  # type: ignore[index]
            assert summary["nodes"] == [backup] and summary["amount"] > 0
            [row] = spend.rows(summary["request_id"])
            assert row.outcome == "ok" and row.amount == summary["amount"]
            assert row.receipt is not None
        cheapest: Any = {"agoranet": {"prefer": "cheapest"}}
        # The victim's first answer opens the gateway's channel to it (the frames it may cut
        # there need not be tokens): whole from one node or the other, paid either way.
        assert via.completions.create(**asked, extra_body=cheapest).choices[0].text == whole
        _wait_unbanned(gateway, victim)
        text, _, cut, _ = _streamed(via.completions.create(
            **asked, stream=True, stream_options={"include_usage": True}, extra_body=cheapest))
        _wait_unbanned(gateway, victim)
        again = via.completions.create(**asked, extra_body=cheapest)
        assert text == again.choices[0].text == whole
        for summary in (cut, again.model_extra["agoranet"]):  # type: ignore[index]
            assert summary is not None and summary["nodes"] == [victim, backup]
            assert summary["failovers"] == 1
            rows = spend.rows(summary["request_id"])
            beyond = sum(r.amount for r in rows if r.outcome == "unreceipted")
            rows = [r for r in rows if r.outcome != "unreceipted"]
            assert [(r.node, r.outcome) for r in rows] == [(victim, "partial"), (backup, "ok")]
            receipted = 0
            for row, index in zip(rows, (3, 4), strict=True):
                assert row.receipt is not None
                receipt = Receipt.from_json(json.loads(row.receipt))
                verify_receipt(receipt, chain.accounts[index])
                assert row.amount == receipt.amount > 0
                receipted += receipt.amount
            assert summary["amount"] == receipted + beyond
        spend.close()
        for index, ledger in ledgers.items():
            force_settlement(chain.rpc_url, ledger, chain.private_keys[index])
        books = [BuyerBook.from_payer_store(p.parent, headroom=1_000)
                 for p in (tmp_path / "gw").rglob("payer.sqlite")]
        for index, ledger in ledgers.items():
            [book] = [b for b in books if b.receipts and all(
                r.signer.lower() == chain.accounts[index].lower() for r in b.receipts)]
            assert_money_invariants(w3, addresses, before=before, books=[book], ledger=ledger)
