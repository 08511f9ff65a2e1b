"""Adapters belong to whoever uploaded or trained them, on a real node process.

Listing shows a caller only its own (named by its bearer token, or by the owner token
an anonymous upload gets back); serving needs only the id; a fine-tuned model is served
by the node that trained it at once, under its ``fine_tuned_model`` name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from agoranet.node.launcher import running_command
from agoranet.tuning.adapter import adapter_model_name, pack_adapter, read_adapter
from agoranet.tuning.housestyle import write_house_style
from helpers import node_process

pytestmark = pytest.mark.slow


def _listed(root: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{root}/adapters", headers=headers, timeout=30)


def test_listing_shows_only_ones_own(tiny_node: str, house_adapter: Path,
                                     brief_adapter: Path) -> None:
    house, brief = read_adapter(house_adapter).id, read_adapter(brief_adapter).id
    put = httpx.post(f"{tiny_node}/adapters", content=pack_adapter(house_adapter),
                     headers={"Authorization": "Bearer alice-secret"}, timeout=60)
    assert put.status_code == 201 and "owner_token" not in put.json()
    anonymous = httpx.post(f"{tiny_node}/adapters", content=pack_adapter(brief_adapter),
                           timeout=60)
    assert anonymous.status_code == 201
    token = anonymous.json()["owner_token"]

    refused = _listed(tiny_node, None)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
    assert {a["id"] for a in _listed(tiny_node, "alice-secret").json()["data"]} == {house}
    assert {a["id"] for a in _listed(tiny_node, token).json()["data"]} == {brief}
    assert _listed(tiny_node, "bob-secret").json()["data"] == []
    # The CLI's listing: 80 columns, the model name whole on a line of its own.
    shown = subprocess.run([sys.executable, "-m", "agoranet", "adapter", "list", "--node",
                            tiny_node, "--owner-key", "alice-secret"], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    assert adapter_model_name("tiny", house) in shown.stdout.splitlines()
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())
    # The node's /v1/models names only public adapters.
    models = OpenAI(base_url=tiny_node, api_key="x", max_retries=0).models
    assert not {adapter_model_name("tiny", a) for a in (house, brief)} & \
        {m.id for m in models.list().data}
    bad = httpx.post(f"{tiny_node}/adapters", content=pack_adapter(house_adapter),
                     params={"public": "maybe"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "public"
    shared = httpx.post(f"{tiny_node}/adapters", content=pack_adapter(house_adapter),
                        params={"public": "true"},
                        headers={"Authorization": "Bearer alice-secret"}, timeout=60)
    assert shared.status_code == 201
    listed = {m.id for m in models.list().data}
    assert adapter_model_name("tiny", house) in listed
    assert adapter_model_name("tiny", brief) not in listed
    # Whoever knows the id may use it.
    bob = OpenAI(base_url=tiny_node, api_key="bob-secret", max_retries=0)
    reply = bob.chat.completions.create(model=adapter_model_name("tiny", house), temperature=0,
                                        max_tokens=20,
                                        messages=[{"role": "user", "content": "Hello!"}])
    assert (reply.choices[0].message.content or "").startswith("Ahoy")


def test_a_fine_tuned_model_is_served_at_once(tiny_node: str, tmp_path: Path) -> None:
    carol = OpenAI(base_url=tiny_node, api_key="carol-secret", max_retries=0)
    data = write_house_style(tmp_path / "style.jsonl")
    with data.open("rb") as handle:
        uploaded = carol.files.create(file=handle, purpose="fine-tune")
    job = carol.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                        hyperparameters={"n_epochs": 12}, seed=3)
    deadline = time.monotonic() + 240
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "fine-tuning job did not finish"
        time.sleep(0.5)
        job = carol.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model
    # No download, no upload: the node serves it under its name, and lists it for carol.
    reply = carol.chat.completions.create(model=job.fine_tuned_model, temperature=0,
                                          max_tokens=20,
                                          messages=[{"role": "user", "content": "Hello!"}])
    assert (reply.choices[0].message.content or "").startswith("Ahoy")
    mine = _listed(tiny_node, "carol-secret").json()["data"]
    assert [a["model"] for a in mine] == [job.fine_tuned_model]
    assert job.fine_tuned_model not in {a["model"] for a in
                                        _listed(tiny_node, "dave-secret").json()["data"]}


def _chat(root: str, model: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{root}/chat/completions", headers=headers, timeout=60,
                      json={"model": model, "temperature": 0, "max_tokens": 12,
                            "messages": [{"role": "user", "content": "Hello!"}]})


def test_a_private_adapter_is_served_to_its_owner_alone(
        tiny_model: Path, house_adapter: Path, brief_adapter: Path, tmp_path: Path) -> None:
    house = read_adapter(house_adapter).id
    name, missing = adapter_model_name("tiny", house), adapter_model_name("tiny", "7" * 64)
    shared = adapter_model_name("tiny", read_adapter(brief_adapter).id)
    with ExitStack() as stack:
        node = stack.enter_context(node_process([
            "--model", str(tiny_model), "--free", "--no-fine-tuning",
            "--adapters-dir", str(tmp_path / "adapters")]))
        public = httpx.post(f"{node}/adapters", content=pack_adapter(brief_adapter),
                            params={"public": "true"}, timeout=60)
        assert public.status_code == 201 and public.json()["public"] is True
        both = httpx.post(f"{node}/adapters", content=pack_adapter(house_adapter),
                          params={"public": "true", "private": "true"},
                          headers={"Authorization": "Bearer alice-secret"}, timeout=60)
        assert both.status_code == 400 and both.json()["error"]["param"] == "private"
        put = httpx.post(f"{node}/adapters", content=pack_adapter(house_adapter),
                         params={"private": "true"},
                         headers={"Authorization": "Bearer alice-secret"}, timeout=60)
        assert put.status_code == 201 and put.json()["private"] is True
        assert put.json()["public"] is False
        unlisted = httpx.post(f"{node}/adapters", content=pack_adapter(house_adapter),
                              params={"private": "false"},
                              headers={"Authorization": "Bearer carol-secret"}, timeout=60)
        assert unlisted.status_code == 201  # carol owns it too now; alice's flag holds
        assert unlisted.json()["private"] is True
        gateway = stack.enter_context(running_command([
            "gateway", "--open", "--node", node, "--spend-log",
            str(tmp_path / "gw" / "spend.sqlite")]))

        # The gateway's /v1/models lists the public adapter, not the private one.
        deadline = time.monotonic() + 30
        while not (models := {m["id"]: m for m in
                              httpx.get(f"{gateway}/models", timeout=10).json()["data"]}):
            assert time.monotonic() < deadline, "the gateway read no offer"
            time.sleep(0.2)
        assert set(models) == {"tiny", shared}, models
        assert models[shared]["owned_by"] == node
        assert models[shared]["agoranet"]["base_model"] == "tiny"
        assert models[shared]["agoranet"]["nodes"] == 1

        # Its owner is served; anyone else is told what a missing id is told.
        mine = _chat(node, name, "alice-secret")
        assert mine.status_code == 200
        assert mine.json()["choices"][0]["message"]["content"].startswith("Ahoy")
        absent = _chat(node, missing, "bob-secret")
        assert absent.status_code == 404
        for token in ("bob-secret", None):
            refused = _chat(node, name, token)
            assert refused.status_code == 404
            assert refused.json() == {"error": {
                **absent.json()["error"],
                "message": absent.json()["error"]["message"].replace("7" * 64, house)}}
        listed = {a["id"]: a for a in _listed(node, "alice-secret").json()["data"]}
        assert listed[house]["private"] is True
        assert name not in {m["id"] for m in httpx.get(f"{node}/models").json()["data"]}

        # Through a gateway (which names no owner) it is a 404 that leaves the node clean.
        root = gateway.removesuffix("/v1")
        deadline = time.monotonic() + 30
        while not httpx.get(f"{root}/agoranet/nodes", timeout=10).json()["nodes"][0]["models"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        through = _chat(gateway, name, None)
        assert through.status_code == 404, through.text
        assert through.json()["error"]["code"] == "model_not_found"
        assert _chat(gateway, "tiny", None).status_code == 200
        row = httpx.get(f"{root}/agoranet/nodes", timeout=10).json()["nodes"][0]
        assert row["failures"] == 0 and not row["banned"] and row["successes"] == 1, row

        # Only an owner changes the flags; another gets the missing adapter's 404.
        change = f"{node}/adapters/{house}"
        other = httpx.post(change, json={"private": False},
                           headers={"Authorization": "Bearer bob-secret"}, timeout=30)
        assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
        assert httpx.post(change, json={"private": False}, timeout=30).status_code == 401
        bad = httpx.post(change, json={"private": "no"},
                         headers={"Authorization": "Bearer alice-secret"}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "private"
        clash = httpx.post(change, json={"public": True},
                           headers={"Authorization": "Bearer alice-secret"}, timeout=30)
        assert clash.status_code == 400  # still private: not both
        opened = httpx.post(change, json={"private": False, "public": True},
                            headers={"Authorization": "Bearer alice-secret"}, timeout=30)
        assert opened.status_code == 200
        assert (opened.json()["private"], opened.json()["public"]) == (False, True)
        assert _chat(node, name, "bob-secret").status_code == 200
        assert _chat(gateway, name, None).status_code == 200
        assert name in {m["id"] for m in httpx.get(f"{node}/models").json()["data"]}
        closed = httpx.post(change, json={"private": True, "public": False},
                            headers={"Authorization": "Bearer alice-secret"}, timeout=30)
        assert closed.status_code == 200 and closed.json()["private"] is True
        assert _chat(node, name, "bob-secret").status_code == 404
        assert name not in {m["id"] for m in httpx.get(f"{node}/models").json()["data"]}
