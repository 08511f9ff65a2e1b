"""Build the tiny model: train a tokenizer, initialise a small Llama, train it briefly.

The result is an ordinary Hugging Face model directory (safetensors, tokenizer
files with a chat template), loaded by the same code that loads Hub models.
Everything is seeded: the same spec on the same machine gives the same weights.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agoranet.errors import ModelBuildError
from agoranet.tinymodel.grammar import dialogues
from agoranet.tinymodel.template import CHAT_TEMPLATE, TOOL_CALL_PARSER, TOOL_TOKENS, render
from agoranet.tinymodel.toolcorpus import tool_samples

__all__ = [
    "CHAT_TEMPLATE", "SIZES", "SPECIAL_TOKENS", "BuildReport", "TinySpec", "build_tiny_model",
]

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TinySpec:
    """Size and training budget of the tiny model."""

    vocab_size: int = 1024
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    context_length: int = 512
    dialogues: int = 12000
    tool_dialogues: int = 3000  # with tools offered (toolcorpus); most answer with calls
    steps: int = 500
    batch_size: int = 8
    seq_len: int = 256  # a prompt with tools is about 200 tokens
    learning_rate: float = 3e-3
    seed: int = 0


SIZES = {
    "default": TinySpec(),
    # Fewer layers, narrower, fewer steps; the same tokenizer and corpus (a cheaper model
    # "trained the same way", for audit tests; builds in seconds).
    "small": TinySpec(hidden_size=96, intermediate_size=256, num_layers=2, num_heads=3,
                      num_kv_heads=1, steps=150),
}


@dataclass(frozen=True)
class BuildReport:
    path: Path
    parameters: int
    final_loss: float
    seconds: float


_TOOLS_END = "</tools><|end|>\n"


def _corpus(spec: TinySpec) -> list[str]:
    """The training texts: everyday dialogues and dialogues with tools, through the chat
    template, in a seeded order."""
    texts = [render(list(d)) for d in dialogues(spec.dialogues, seed=spec.seed)]
    texts += [render(s.messages, s.tools)
              for s in tool_samples(spec.tool_dialogues, seed=spec.seed)]
    random.Random(spec.seed).shuffle(texts)
    return texts


def _tokens(tokenizer: Any, texts: list[str]) -> tuple[list[int], list[int]]:
    """The corpus as token ids, and the labels to learn: the ids, except the list of
    tools (the model reads it, it never has to write it: the loss goes to what the
    assistant does with it)."""
    ids: list[int] = []
    labels: list[int] = []
    for text in texts:
        head, found, rest = text.partition(_TOOLS_END)
        shown = tokenizer(head + found, add_special_tokens=False)["input_ids"] if found else []
        learned = tokenizer(rest if found else text, add_special_tokens=False)["input_ids"]
        ids += shown + learned
        labels += [-100] * len(shown) + learned
    return ids, labels


def _train_tokenizer(texts: list[str], spec: TinySpec) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|end|>", pad_token="<|pad|>"
    )
    tokenizer.add_tokens(TOOL_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = spec.context_length
    return tokenizer


def _make_model(spec: TinySpec, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.context_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def _train(model: Any, ids: list[int], labels: list[int], spec: TinySpec,
           progress: ProgressFn | None) -> float:
    import torch

    size = len(ids) // spec.seq_len * spec.seq_len
    blocks = torch.tensor(ids[:size], dtype=torch.long).view(-1, spec.seq_len)
    targets = torch.tensor(labels[:size], dtype=torch.long).view(-1, spec.seq_len)
    generator = torch.Generator().manual_seed(spec.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    warmup = max(1, spec.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    model.train()
    loss_value = float("nan")
    for step in range(spec.steps):
        rows = torch.randint(0, blocks.shape[0], (spec.batch_size,), generator=generator)
        loss = model(input_ids=blocks[rows], labels=targets[rows]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad(set_to_none=True)
        loss_value = float(loss.item())
        if progress is not None:
            progress(step + 1, spec.steps, loss_value)
    model.eval()
    return loss_value


def build_tiny_model(
    path: Path, spec: TinySpec | None = None, progress: ProgressFn | None = None
) -> BuildReport:
    """Build, train and save the tiny model into ``path`` (created or replaced)."""
    try:
        import torch
    except ImportError as exc:
        raise ModelBuildError("building the tiny model needs the 'hf' extra (torch)") from exc
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = spec or TinySpec()
    started = time.perf_counter()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelBuildError(f"cannot create {path}: {exc}") from exc
    torch.manual_seed(spec.seed)
    texts = _corpus(spec)
    tokenizer = _train_tokenizer(texts, spec)
    ids, labels = _tokens(tokenizer, texts)
    model = _make_model(spec, tokenizer)
    loss = _train(model, ids, labels, spec, progress)
    try:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        (path / "agoranet-tiny.json").write_text(json.dumps(
            {"spec": asdict(spec), "final_loss": loss, "tool_call_parser": TOOL_CALL_PARSER},
            indent=2))
    except OSError as exc:
        raise ModelBuildError(f"cannot write the model to {path}: {exc}") from exc
    parameters = sum(p.numel() for p in model.parameters())
    return BuildReport(path, parameters, loss, time.perf_counter() - started)
