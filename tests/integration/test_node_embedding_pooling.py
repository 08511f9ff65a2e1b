"""``agoranet node --embedding-pooling``: a causal LM serves chat and embeddings both."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

from helpers import node_process

pytestmark = pytest.mark.slow


def test_a_causal_lm_with_a_stated_pooling_embeds_and_chats(tiny_model: Path) -> None:
    with node_process(["--model", str(tiny_model), "--embedding-pooling", "mean",
                       "--no-adapters", "--no-fine-tuning"]) as url:
        offer = httpx.get(url.removesuffix("/v1") + "/.well-known/agoranet").json()
        client = OpenAI(base_url=url, api_key="x", max_retries=0)
        vectors = client.embeddings.create(model="tiny", input=["Hello there", "the river"])
        chat = client.chat.completions.create(
            model="tiny", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert {"embeddings", "tools"} <= set(offer["models"][0]["capabilities"])
    assert len(vectors.data) == 2 and vectors.usage.prompt_tokens > 2
    norms = np.linalg.norm(np.array([d.embedding for d in vectors.data]), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)  # normalised
    assert chat.choices[0].message.content is not None
