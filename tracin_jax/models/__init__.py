"""Classifier models: BERT/RoBERTa (bert.py), the paper's CNN (cnn.py), HF conversion.

Every model is a Flax linen module used functionally:

    out = model.apply({"params": p}, input_ids, attention_mask, token_type_ids=None,
                      inputs_embeds=None, deterministic=True, rngs={"dropout": key})
    out.logits [B, C] float32; out.features [B, H] float32 (the classifier's input a(x))
    model.apply({"params": p}, input_ids, method="embed_words")  # E[x]: [B, L, D]

The word-embedding table lives at WORD_EMBEDDING_PATH and the classifier at
("classifier", "kernel"|"bias") in every model.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from tracin_jax.models.bert import BertClassifier, BertConfig
from tracin_jax.models.cnn import CNNClassifier, CNNConfig
from tracin_jax.models.groups import is_bias, parameter_groups, select
from tracin_jax.models.outputs import WORD_EMBEDDING_PATH, ModelOutput, check_token_ids, lookup_words

# RoBERTa-base values for fields a 'roberta' model config leaves unset.
_ROBERTA_DEFAULTS = dict(type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
                         max_position_embeddings=514)


def _config_fields(model_cfg: Any, cls) -> dict[str, Any]:
    """The dataclass fields of `cls` that `model_cfg` sets (non-None)."""
    names = [f.name for f in cls.__dataclass_fields__.values()]
    return {n: model_cfg.get(n) for n in names if model_cfg.get(n) is not None}


def build_model(model_cfg: Any):
    """Builds the module described by an ml_collections ConfigDict (or a dict).

    model_cfg.kind in {'bert', 'roberta', 'cnn'}; the other keys are the fields of
    BertConfig / CNNConfig. For 'bert'/'roberta' with `model_cfg.hf_dir` set, the
    architecture comes from `hf_dir/config.json`; only `num_labels` and `dtype` are
    taken from model_cfg.
    """
    kind = model_cfg.get("kind")
    if kind == "cnn":
        return CNNClassifier(CNNConfig(**_config_fields(model_cfg, CNNConfig)))
    if kind not in ("bert", "roberta"):
        raise ValueError(f"model kind must be 'bert', 'roberta' or 'cnn', got {kind!r}")
    hf_dir = model_cfg.get("hf_dir")
    if hf_dir:
        with open(os.path.join(hf_dir, "config.json")) as f:
            hf = json.load(f)
        if hf.get("model_type") != kind:
            raise ValueError(f"model kind {kind!r} but {hf_dir}/config.json has model_type "
                             f"{hf.get('model_type')!r}")
        config = BertConfig.from_hf_dict(hf, num_labels=model_cfg.get("num_labels"),
                                         dtype=model_cfg.get("dtype") or "float32")
        return BertClassifier(config)
    fields = _config_fields(model_cfg, BertConfig)
    fields.pop("model_type", None)
    if kind == "roberta":
        fields = {**_ROBERTA_DEFAULTS, **fields}
    return BertClassifier(BertConfig(model_type=kind, **fields))


def init_params(model, rng: jax.Array, seq_len: int) -> dict:
    """Freshly initialised float32 params for inputs of length `seq_len`."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    mask = jnp.ones((1, seq_len), jnp.int32)
    variables = model.init({"params": rng}, ids, mask, deterministic=True)
    return variables["params"]


def get_word_embedding_table(params) -> jax.Array:
    """The word-embedding table E: [vocab, D]."""
    node = params
    for key in WORD_EMBEDDING_PATH:
        node = node[key]
    return node


__all__ = [
    "ModelOutput", "WORD_EMBEDDING_PATH", "BertClassifier", "BertConfig", "CNNClassifier",
    "CNNConfig", "build_model", "init_params", "check_token_ids", "lookup_words", "get_word_embedding_table",
    "parameter_groups", "is_bias", "select",
]
