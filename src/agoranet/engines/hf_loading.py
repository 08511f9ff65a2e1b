"""Loading a ``transformers`` model exactly as a node serves it.

A local directory or a Hugging Face Hub id (fetched into the local Hub cache):
weights and tokenizer through ``AutoModelForCausalLM`` / ``AutoTokenizer``, on
the chosen device and dtype, warmed up, with the identity a node publishes
(weight hashes, context length, sampler, commitments). The engine
(:mod:`agoranet.engines.hf`) serves a :class:`LoadedModel`; the auditor and the
test-only cheats (:mod:`agoranet.testing.cheats`) load their own copies the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agoranet.engines import capabilities
from agoranet.engines.base import ModelInfo
from agoranet.engines.sampling import SAMPLER_ID
from agoranet.engines.weights import hash_weights, weight_files, weights_id
from agoranet.errors import ModelLoadError
from agoranet.proofs.commitments import ALGORITHM as COMMITMENT_ALGORITHM

__all__ = ["DEFAULT_MODEL", "LoadedModel", "load_model", "max_token_bytes", "resolve_model_dir"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "models/tiny"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def resolve_model_dir(model: str) -> tuple[Path, str]:
    """A local directory for ``model`` and the name to serve it under.

    ``model`` is a directory, or a Hugging Face Hub id (``org/name``) fetched
    into (or found in) the local Hub cache.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve(), path.resolve().name
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(f"model {model!r}: no such directory, and not a Hub id (org/name)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=model, allow_patterns=_HUB_PATTERNS)
    except Exception as exc:  # hub errors are many and untyped; convert at the boundary
        raise ModelLoadError(f"cannot fetch {model!r} from the Hugging Face Hub: {exc}") from exc
    return Path(local), model.split("/")[-1].lower()


@dataclass(frozen=True)
class LoadedModel:
    """Weights, tokenizer and identity of one model, ready to generate."""

    info: ModelInfo
    model: Any
    tokenizer: Any
    device: torch.device
    eos_ids: frozenset[int]
    directory: Path


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        value = getattr(torch, dtype)
    except AttributeError as exc:
        raise ModelLoadError(f"unknown dtype {dtype!r}") from exc
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}")
    return value


def max_token_bytes(tokenizer: Any) -> int | None:
    """An upper bound on the bytes of text one token stands for: the UTF-8 length of the
    longest entry of the vocabulary (a byte-level or SentencePiece token's spelling is
    never shorter than the text it stands for: ``Ġ``, ``▁`` and ``<0x0A>`` each spell
    one byte)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return None
    return max((len(str(token).encode()) for token in vocab), default=None)


def load_model(
    model: str, *, served_name: str | None = None, device: str = "auto", dtype: str = "auto"
) -> LoadedModel:
    """Load ``model`` (directory or Hub id) exactly as a node serves it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory, default_name = resolve_model_dir(model)
    where = _pick_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        weights = AutoModelForCausalLM.from_pretrained(directory, dtype=_pick_dtype(dtype, where))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model from {directory}: {exc}") from exc
    weights.to(where).eval()
    with torch.inference_mode():  # warm up kernels so the first request is not the slow one
        weights(input_ids=torch.tensor([[0]], device=where))
    if tokenizer.chat_template is None:
        logger.warning("%s has no chat template; chat requests will be refused", directory)
    hashes = hash_weights(weight_files(directory), root=directory)
    config = weights.config
    context = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    eos = getattr(weights.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    eos_ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    info = ModelInfo(
        name=served_name or default_name,
        context_length=context,
        weights_sha256=hashes,
        model_sha256=weights_id(hashes) if hashes else None,
        sampler=SAMPLER_ID,
        commitments=COMMITMENT_ALGORITHM,
        max_token_bytes=max_token_bytes(tokenizer),
        # Forced calls and JSON by grammar (engines.constrained); 'auto' needs a parser.
        capabilities=frozenset({capabilities.TOOLS, capabilities.STRUCTURED_OUTPUT,
                                capabilities.LOGPROBS}),
    )
    return LoadedModel(info, weights, tokenizer, where, eos_ids, directory)
