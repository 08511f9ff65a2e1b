"""The agent-framework examples in examples/, run as a user runs them, against a keyed gateway.

Each example reads the gateway's URL and a gateway key from OPENAI_BASE_URL and
OPENAI_API_KEY. Here each runs as its own process with a key of its own, minted for it
over HTTP (the gateway is not ``--open``), and must print the very answer the gateway
gives to the same messages at temperature 0, and spend from its key. The README shows
each file verbatim: a test below holds them equal.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, node_process
from keyed import KeyedGateway, keyed_gateway

EXAMPLES = ROOT / "examples"
QUESTION = "Tell me about the market."
SYSTEM = "You answer briefly."
# The example, and the system message its framework sends before the question (if any).
CASES = {
    "openai_client.py": None,
    "langchain_chat.py": None,
    "openai_agents_sdk.py": SYSTEM,
    "pydantic_ai_agent.py": SYSTEM,
}
_SHOWN = re.compile(r"<!-- example: (examples/[\w.]+) -->\n```python\n(.*?)```", re.DOTALL)


def test_every_example_is_tested_and_shown_verbatim_in_the_readme() -> None:
    assert sorted(CASES) == sorted(p.name for p in EXAMPLES.glob("*.py"))
    shown = dict(_SHOWN.findall((ROOT / "README.md").read_text()))
    assert sorted(shown) == sorted(f"examples/{name}" for name in CASES)
    for path, code in shown.items():
        assert code == (ROOT / path).read_text(), f"README's copy of {path} differs from it"


@pytest.fixture(scope="module")
def gateway(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedGateway]:
    with node_process(["--model", str(tiny_model), "--price-in", "1000", "--price-out", "250000",
                       "--free", "--no-fine-tuning", "--no-adapters"]) as node, \
            keyed_gateway(tmp_path_factory.mktemp("gateway"), node) as keyed:
        yield keyed


def run_example(name: str, base_url: str, key: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY=key, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(EXAMPLES / name)], env=env, cwd=EXAMPLES,
                          capture_output=True, text=True, timeout=120, check=False)


def expected_answer(gateway: KeyedGateway, system: str | None) -> str:
    messages = [{"role": "user", "content": QUESTION}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    reply = gateway.call("POST", "/v1/chat/completions", gateway.owner, json={
        "model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_the_example_chats_through_the_gateway_with_its_key(gateway: KeyedGateway,
                                                            name: str) -> None:
    key_name = name.removesuffix(".py").replace("_", "-")
    key = gateway.mint(gateway.owner, key_name, 1_000_000)
    done = run_example(name, gateway.url, key)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = done.stdout.strip()
    assert len(answer.split()) >= 3, done.stdout
    assert answer == expected_answer(gateway, CASES[name]).strip()
    spent = gateway.key(key_name)
    assert spent["spent"] > 0 and spent["reserved"] == 0, spent
    assert gateway.key("owner")["reserved"] == 0


@pytest.mark.slow
def test_an_example_without_a_valid_key_is_refused(gateway: KeyedGateway) -> None:
    done = run_example("openai_client.py", gateway.url, "agn-not-a-key")
    assert done.returncode != 0
    assert "401" in done.stderr and "the API key is not valid" in done.stderr
