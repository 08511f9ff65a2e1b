"""LoRA training with peft on chat data, loss on assistant turns only.

The base model is loaded by the same code a node uses, so an adapter trained
here names exactly the weights (by sha256) that a node will serve it on.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agoranet.engines.hf import LoadedModel, load_model
from agoranet.errors import TuningError
from agoranet.tuning.adapter import MANIFEST, AdapterManifest, adapter_id
from agoranet.tuning.config import TuneConfig, default_epochs, default_learning_rate
from agoranet.tuning.data import Example, TokenizedExample, split, tokenize

__all__ = ["TuneConfig", "TuneReport", "heldout_loss", "train_adapter"]

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TuneReport:
    out: Path
    adapter_id: str
    base_model: str
    train_examples: int
    heldout_examples: int
    trained_tokens: int
    steps: int
    train_loss: float
    heldout_before: float | None
    heldout_after: float | None
    seconds: float


def _batches(
    items: list[TokenizedExample], size: int, pad_id: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    out = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        width = max(len(i.input_ids) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, item in enumerate(chunk):
            n = len(item.input_ids)
            ids[row, :n] = torch.tensor(item.input_ids)
            labels[row, :n] = torch.tensor(item.labels)
            mask[row, :n] = 1
        out.append((ids.to(device), mask.to(device), labels.to(device)))
    return out


def heldout_loss(model: Any, items: list[TokenizedExample], pad_id: int, device: torch.device) -> float:
    """Mean loss per assistant token over ``items``."""
    total, tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for ids, mask, labels in _batches(items, 8, pad_id, device):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                ignore_index=-100, reduction="sum",
            )
            total += float(loss.item())
            tokens += int((target != -100).sum().item())
    return total / max(tokens, 1)


def train_adapter(
    examples: list[Example],
    base: str | LoadedModel,
    out: Path,
    config: TuneConfig | None = None,
    *,
    data_sha256: str | None = None,
    progress: ProgressFn | None = None,
) -> TuneReport:
    """Train a LoRA adapter on ``examples`` over ``base`` and save it into ``out``."""
    from peft import LoraConfig, get_peft_model

    config = config or TuneConfig()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    loaded = load_model(base) if isinstance(base, str) else base
    tokenizer, context = loaded.tokenizer, loaded.info.context_length
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_set, held = split(examples, config.held_out, config.seed)
    train_items = [tokenize(tokenizer, e, context) for e in train_set]
    held_items = [tokenize(tokenizer, e, context) for e in held]
    if not any(i.trained_tokens for i in train_items):
        raise TuningError("no assistant tokens to train on")

    before = heldout_loss(loaded.model, held_items, pad_id, loaded.device) if held_items else None
    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules if isinstance(config.target_modules, str)
        else list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    size = sum(p.numel() for p in loaded.model.parameters())
    learning_rate = config.learning_rate or default_learning_rate(size)
    epochs = config.epochs or default_epochs(len(train_items))
    with warnings.catch_warnings():  # peft trips a transformers deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(loaded.model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=learning_rate, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(train_items) / config.batch_size)
    steps = per_epoch * epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / max(1, steps)))
    )
    rng = random.Random(config.seed)
    step, loss_value = 0, float("nan")
    model.train()
    for _ in range(epochs):
        order = list(train_items)
        rng.shuffle(order)
        for ids, mask, labels in _batches(order, config.batch_size, pad_id, loaded.device):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(loss.item())
            if progress is not None:
                progress(step, steps, loss_value)
    after = heldout_loss(model, held_items, pad_id, loaded.device) if held_items else None

    manifest = AdapterManifest(
        base_model=loaded.info.name,
        base_model_sha256=loaded.info.model_sha256,
        rank=config.rank,
        alpha=config.alpha,
        target_modules=config.target_modules if isinstance(config.target_modules, str)
        else list(config.target_modules),
        data_sha256=data_sha256,
        examples=len(examples),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        heldout_loss_before=before,
        heldout_loss_after=after,
    )
    _save(model, out, manifest, loaded.info.name)
    model.unload()  # give the caller its base model back, without LoRA layers
    if hasattr(loaded.model, "peft_config"):  # unload() leaves peft's bookkeeping behind
        del loaded.model.peft_config
    loaded.model.eval()
    return TuneReport(
        out=out, adapter_id=adapter_id(out), base_model=loaded.info.name,
        train_examples=len(train_items), heldout_examples=len(held_items),
        trained_tokens=sum(i.trained_tokens for i in train_items) * epochs,
        steps=step, train_loss=loss_value, heldout_before=before, heldout_after=after,
        seconds=time.perf_counter() - started,
    )


def _save(model: Any, out: Path, manifest: AdapterManifest, base_name: str) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        model.peft_config["default"].base_model_name_or_path = base_name
        model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
        (out / "README.md").unlink(missing_ok=True)  # peft's boilerplate model card
        (out / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    except OSError as exc:
        raise TuningError(f"cannot write the adapter to {out}: {exc}") from exc
