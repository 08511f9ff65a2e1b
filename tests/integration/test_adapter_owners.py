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
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from agoranet.tuning.adapter import adapter_model_name, pack_adapter, read_adapter
from agoranet.tuning.housestyle import write_house_style

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
