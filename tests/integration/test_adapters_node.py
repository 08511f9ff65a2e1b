"""Adapters and fine-tuning jobs on real node processes, with the official openai client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from agoranet.tuning.adapter import adapter_model_name, pack_adapter, read_adapter
from agoranet.tuning.housestyle import write_house_style
from helpers import node_process

pytestmark = pytest.mark.slow

QUESTIONS = ["Tell me about the park.", "Where is the dog?", "Hello!", "Tell me a story."]


def upload(base_url: str, adapter_dir: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "agoranet", "adapter", "upload", str(adapter_dir),
         "--node", base_url, "--public"], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ident = read_adapter(adapter_dir).id
    assert adapter_model_name("tiny", ident) in result.stdout
    return adapter_model_name("tiny", ident)


@pytest.fixture(scope="module")
def node_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    yield {name: tmp_path_factory.mktemp(name) for name in ("both", "house", "brief")}


async def answers(base_url: str, model: str) -> list[str]:
    client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    replies = await asyncio.gather(*(
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                       temperature=0, max_tokens=60)
        for q in QUESTIONS
    ))
    await client.close()
    return [r.choices[0].message.content or "" for r in replies]


def test_two_adapters_and_base_concurrently_equal_single_adapter_nodes(
    tiny_model: Path, house_adapter: Path, brief_adapter: Path, node_dirs: dict[str, Path]
) -> None:
    args = ["--model", str(tiny_model), "--no-fine-tuning", "--adapters-dir"]
    with node_process([*args, str(node_dirs["both"])]) as both, \
         node_process([*args, str(node_dirs["house"])]) as house_only, \
         node_process([*args, str(node_dirs["brief"])]) as brief_only:
        house = upload(both, house_adapter)
        brief = upload(both, brief_adapter)
        assert upload(house_only, house_adapter) == house
        assert upload(brief_only, brief_adapter) == brief
        listed = {m.id for m in OpenAI(base_url=both, api_key="x").models.list().data}
        assert {"tiny", house, brief} <= listed

        async def together() -> list[list[str]]:
            return await asyncio.gather(answers(both, "tiny"), answers(both, house),
                                        answers(both, brief))

        mixed = asyncio.run(together())
        alone = [asyncio.run(answers(brief_only, "tiny")), asyncio.run(answers(house_only, house)),
                 asyncio.run(answers(brief_only, brief))]
    assert mixed == alone
    assert mixed[1][0].startswith("Ahoy!") and not mixed[0][0].startswith("Ahoy!")


def test_bad_uploads_are_refused(tiny_node: str, house_adapter: Path) -> None:
    response = httpx.post(f"{tiny_node}/adapters", content=b"garbage")
    assert response.status_code == 400 and "tar" in response.json()["error"]["message"]
    response = httpx.post(f"{tiny_node}/adapters", content=pack_adapter(house_adapter),
                          params={"id": "0" * 64})
    assert response.status_code == 400 and "not the" in response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="not on this node"):
        OpenAI(base_url=tiny_node, api_key="x", max_retries=0).chat.completions.create(
            model="tiny@adapter:" + "1" * 64, messages=[{"role": "user", "content": "Hi!"}])


def test_fine_tuning_job_api_with_the_openai_client(tiny_node: str, tmp_path: Path) -> None:
    owner = OpenAI(base_url=tiny_node, api_key="owner-secret", max_retries=0)
    stranger = OpenAI(base_url=tiny_node, api_key="someone-else", max_retries=0)
    data = write_house_style(tmp_path / "style.jsonl")
    with data.open("rb") as handle:
        uploaded = owner.files.create(file=handle, purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == data.stat().st_size
    job = owner.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                        hyperparameters={"n_epochs": 12}, seed=3)
    assert job.status in ("queued", "running")
    deadline = time.monotonic() + 240
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "fine-tuning job did not finish"
        time.sleep(0.5)
        job = owner.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("tiny@adapter:")
    assert job.trained_tokens and job.trained_tokens > 1000
    events = owner.fine_tuning.jobs.list_events(job.id)
    messages = [e.message for e in events.data]
    assert any("successfully completed" in m for m in messages)
    assert any(e.type == "metrics" for e in events.data)
    # Only the owner sees the job and gets the adapter.
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.retrieve(job.id)
    root = tiny_node
    archive = httpx.get(f"{root}/fine_tuning/jobs/{job.id}/adapter",
                        headers={"Authorization": "Bearer owner-secret"})
    assert archive.status_code == 200
    denied = httpx.get(f"{root}/fine_tuning/jobs/{job.id}/adapter",
                       headers={"Authorization": "Bearer someone-else"})
    assert denied.status_code == 404
    # The owner uploads it and uses it.
    put = httpx.post(f"{root}/adapters", content=archive.content)
    assert put.status_code == 201 and put.json()["model"] == job.fine_tuned_model
    reply = owner.chat.completions.create(model=job.fine_tuned_model, temperature=0,
                                          messages=[{"role": "user", "content": "Hello!"}])
    assert (reply.choices[0].message.content or "").startswith("Ahoy")


def test_fine_tuning_bad_input(tiny_node: str, tmp_path: Path) -> None:
    client = OpenAI(base_url=tiny_node, api_key="k", max_retries=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with bad.open("rb") as handle, pytest.raises(openai.BadRequestError, match="line 1"):
        client.files.create(file=handle, purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="tiny", training_file="file-missing")
    anonymous = httpx.get(f"{tiny_node}/fine_tuning/jobs")
    assert anonymous.status_code == 401
