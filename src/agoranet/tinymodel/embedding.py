"""A tiny embedding model: a small BERT in the sentence-transformers layout.

Its weights are random (seeded), not trained: it exists so that tests and demos run the
real loading and serving path of an embedding model (``AutoModel`` weights, a
tokenizer, ``modules.json``, ``1_Pooling/config.json`` with mean pooling and a
``Normalize`` module) without downloading one. The vectors it makes are
deterministic but carry no meaning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agoranet.errors import ModelBuildError
from agoranet.tinymodel.grammar import dialogues
from agoranet.tinymodel.template import render

__all__ = ["build_tiny_embedding_model"]

_SPECIALS = ["<pad>", "<unk>", "<cls>", "<sep>"]
_MAX_LENGTH = 128


def _tokenizer(seed: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [render(list(d)) for d in dialogues(400, seed=seed)]
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=512, special_tokens=_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cls, sep = core.token_to_id("<cls>"), core.token_to_id("<sep>")
    core.post_processor = processors.TemplateProcessing(
        single="<cls> $A <sep>", pair="<cls> $A <sep> $B <sep>",
        special_tokens=[("<cls>", cls), ("<sep>", sep)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                        unk_token="<unk>", cls_token="<cls>", sep_token="<sep>")
    tokenizer.model_max_length = _MAX_LENGTH
    return tokenizer


def build_tiny_embedding_model(path: Path, *, seed: int = 0, hidden_size: int = 64) -> Path:
    """Write the tiny embedding model into ``path`` (created or replaced); ``path``."""
    try:
        import torch
        from transformers import BertConfig, BertModel
    except ImportError as exc:
        raise ModelBuildError("building the embedding model needs the 'hf' extra") from exc
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    tokenizer = _tokenizer(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=2 * hidden_size,
                        max_position_embeddings=_MAX_LENGTH, pad_token_id=tokenizer.pad_token_id)
    model = BertModel(config)  # its pooler is unused (1_Pooling pools); kept: loads clean
    model.eval()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {"word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False,
               "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False,
               "include_prompt": True}
    try:
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        (path / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": _MAX_LENGTH, "do_lower_case": False}, indent=2))
        (path / "1_Pooling").mkdir(exist_ok=True)
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        (path / "2_Normalize").mkdir(exist_ok=True)
        # last: its presence says the model is whole (tests build it once, under a lock)
        (path / "modules.json").write_text(json.dumps(modules, indent=2))
    except OSError as exc:
        raise ModelBuildError(f"cannot write the embedding model to {path}: {exc}") from exc
    return path
