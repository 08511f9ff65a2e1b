"""Pooling token states into one vector, as sentence-transformers does.

A model directory in the sentence-transformers layout says how it embeds: its
``modules.json`` lists a Transformer, a Pooling module (``1_Pooling/config.json``:
which pooling) and, if its vectors are unit length, a Normalize module.
:func:`read_pooling` reads that; :func:`pool` pools (``mean`` over the tokens the
attention mask keeps, ``cls``: the first token, ``last``: the last real token) and
:func:`normalize` scales to unit L2 norm. A causal LM has no such files: its pooling
is stated by the node's operator (``--embedding-pooling``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch

from agoranet.errors import ModelLoadError

__all__ = ["POOLINGS", "Pooling", "is_embedding_model", "normalize", "pool", "read_pooling"]

POOLINGS: Final = ("mean", "last", "cls")

# sentence-transformers' Pooling config keys, by the pooling they ask for.
_MODES: Final = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                 "pooling_mode_lasttoken": "last"}
_UNSUPPORTED: Final = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens")
_KNOWN_MODULES: Final = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True, slots=True)
class Pooling:
    """How a model's token states become one vector, and how long an input may be."""

    mode: str
    normalize: bool
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.mode!r}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def is_embedding_model(directory: Path) -> bool:
    """Whether ``directory`` is a sentence-transformers model (its ``modules.json`` lists
    a Pooling module)."""
    modules = directory / "modules.json"
    if not modules.is_file():
        return False
    listed = _read_json(modules)
    return isinstance(listed, list) and any(
        isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling") for m in listed)


def read_pooling(directory: Path) -> Pooling:
    """The pooling a sentence-transformers model directory states (ModelLoadError for a
    layout or a pooling this engine does not compute)."""
    listed = _read_json(directory / "modules.json")
    if not isinstance(listed, list):
        raise ModelLoadError(f"{directory}/modules.json is not a list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in listed if isinstance(m, dict)]
    unknown = [k for k in kinds if k not in _KNOWN_MODULES]
    if unknown:
        raise ModelLoadError(f"{directory}: sentence-transformers modules {unknown} are not "
                             "supported (only Transformer, Pooling and Normalize)")
    where = next(str(m.get("path", "")) for m in listed
                 if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"))
    config = _read_json(directory / where / "config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{directory}/{where}/config.json is not an object")
    asked = [mode for key, mode in _MODES.items() if config.get(key)]
    odd = [key for key in _UNSUPPORTED if config.get(key)]
    if odd or len(asked) != 1:
        raise ModelLoadError(f"{directory}: the pooling in {where}/config.json is not supported "
                             "(exactly one of mean, cls and last-token pooling is)")
    max_length = None
    bert = directory / "sentence_bert_config.json"
    if bert.is_file():
        found = _read_json(bert)
        if isinstance(found, dict) and isinstance(found.get("max_seq_length"), int):
            max_length = int(found["max_seq_length"])
    return Pooling(asked[0], "Normalize" in kinds, max_length)


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """``states`` ``[batch, tokens, hidden]`` pooled to ``[batch, hidden]`` (float32) over
    the tokens ``mask`` ``[batch, tokens]`` keeps (right padding)."""
    states = states.float()
    if mode == "mean":
        kept = mask.unsqueeze(-1).to(states.dtype)
        return (states * kept).sum(dim=1) / torch.clamp(kept.sum(dim=1), min=1e-9)
    if mode == "cls":
        return states[:, 0]
    if mode == "last":
        last = mask.long().sum(dim=1) - 1
        return states[torch.arange(states.shape[0], device=states.device), last]
    raise ValueError(f"unknown pooling {mode!r}")


def normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit L2 norm (a zero row stays zero)."""
    return torch.nn.functional.normalize(vectors, p=2.0, dim=1)
