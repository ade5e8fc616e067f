"""BERT and RoBERTa encoders with a sequence-classification head (Flax linen).

Numerically this is Hugging Face's `BertForSequenceClassification` /
`RobertaForSequenceClassification` at eval time (parity is tested against the
PyTorch models). The module is used functionally:

    logits, features = model.apply({"params": p}, input_ids, attention_mask)
    e = model.apply({"params": p}, input_ids, method="embed_words")      # E[x]
    model.apply({"params": p}, None, attention_mask, inputs_embeds=e)     # same logits

`inputs_embeds` replaces the word-embedding lookup E[x] only; position and
token-type embeddings and the embedding LayerNorm are applied after it, so
gradients w.r.t. the word embeddings (docs/method.md "Word-embedding gradients") come from
exactly the code path used in training.

Parameter layout (params are always float32; `dtype` is the compute dtype):
    embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
    embeddings/layer_norm/{scale,bias}
    encoder/layer_{i}/attention/{query,key,value,output}/{kernel,bias}
    encoder/layer_{i}/attention_layer_norm/{scale,bias}
    encoder/layer_{i}/intermediate/{kernel,bias}
    encoder/layer_{i}/output/{kernel,bias}
    encoder/layer_{i}/output_layer_norm/{scale,bias}
    pooler/{kernel,bias}        BERT pooler.dense | RoBERTa classifier.dense
    classifier/{kernel,bias}    BERT classifier   | RoBERTa classifier.out_proj
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from tracin_jax.models.outputs import ModelOutput, lookup_words

MODEL_TYPES = ("bert", "roberta")
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Fields shared with a Hugging Face config.json (same names, same meaning).
_HF_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "layer_norm_eps", "pad_token_id", "initializer_range",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig:
    """Architecture of a BERT/RoBERTa classifier. Defaults are BERT-base (HF)."""

    model_type: str = "bert"
    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    num_labels: int
    dtype: str = "float32"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(COMPUTE_DTYPES)}, got {self.dtype!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")

    @property
    def compute_dtype(self):
        return COMPUTE_DTYPES[self.dtype]

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], num_labels: int | None = None,
                     dtype: str = "float32") -> "BertConfig":
        """Builds a config from a Hugging Face `config.json` dict.

        `num_labels` overrides the label count of the file (`id2label` or `num_labels`);
        it is required when the file has neither.
        """
        model_type = d.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"config.json model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        position_type = d.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"only absolute position embeddings are supported, got {position_type!r}")
        if num_labels is None:
            if "id2label" in d:
                num_labels = len(d["id2label"])
            elif "num_labels" in d:
                num_labels = int(d["num_labels"])
            else:
                raise ValueError("num_labels is required: config.json defines no id2label/num_labels")
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                               "num_attention_heads", "intermediate_size") if k not in d]
        if missing:
            raise ValueError(f"config.json lacks required fields {missing}")
        fields = {k: d[k] for k in _HF_FIELDS if k in d and d[k] is not None}
        return cls(model_type=model_type, num_labels=int(num_labels), dtype=dtype, **fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` dict of the matching *ForSequenceClassification."""
        arch = {"bert": "BertForSequenceClassification",
                "roberta": "RobertaForSequenceClassification"}[self.model_type]
        d = {"architectures": [arch], "model_type": self.model_type}
        d.update({k: getattr(self, k) for k in _HF_FIELDS})
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        d["torch_dtype"] = "float32"
        return d


def roberta_position_ids(attention_mask: jax.Array, pad_token_id: int) -> jax.Array:
    """HF `create_position_ids_from_input_ids`, from the mask: [B, L] int32.

    position = pad_token_id + cumsum(mask) at real tokens, pad_token_id at padding.
    """
    mask = attention_mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + pad_token_id


def _dense(config: BertConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=config.compute_dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(config.initializer_range), name=name)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.compute_dtype,
                        param_dtype=jnp.float32, name=name)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        type_vocab = cfg.type_vocab_size
        self.word_embeddings = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init,
                                        param_dtype=jnp.float32, dtype=jnp.float32)
        self.position_embeddings = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                            embedding_init=init, param_dtype=jnp.float32,
                                            dtype=jnp.float32)
        self.token_type_embeddings = nn.Embed(type_vocab, cfg.hidden_size, embedding_init=init,
                                              param_dtype=jnp.float32, dtype=jnp.float32)
        # Summed and normalised in float32, cast to the compute dtype afterwards.
        self.layer_norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32,
                                       param_dtype=jnp.float32)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def embed_words(self, input_ids: jax.Array) -> jax.Array:
        """E[x]: [B, L] int -> [B, L, H] float32 (ids checked: ``models.lookup_words``)."""
        return lookup_words(self.word_embeddings, input_ids, self.config.vocab_size)

    def __call__(self, word_embeds, attention_mask, token_type_ids, deterministic):
        """word_embeds [B, L, H] (= E[x] or a replacement) -> [B, L, H] compute dtype."""
        cfg = self.config
        seq_len = word_embeds.shape[1]
        if cfg.model_type == "roberta":
            if seq_len + cfg.pad_token_id + 1 > cfg.max_position_embeddings:
                raise ValueError(
                    f"sequence length {seq_len} needs position ids up to {seq_len + cfg.pad_token_id}, "
                    f"but max_position_embeddings is {cfg.max_position_embeddings}")
            position_ids = roberta_position_ids(attention_mask, cfg.pad_token_id)
        else:
            if seq_len > cfg.max_position_embeddings:
                raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings "
                                 f"{cfg.max_position_embeddings}")
            position_ids = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
        if token_type_ids is None:
            token_type_ids = jnp.zeros(word_embeds.shape[:2], jnp.int32)
        x = (word_embeds.astype(jnp.float32)
             + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(position_ids))
        x = self.layer_norm(x)
        x = self.dropout(x, deterministic=deterministic)
        return x.astype(cfg.compute_dtype)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention; masked keys get probability exactly 0."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask, deterministic):
        cfg = self.config
        batch, seq_len, hidden = x.shape
        heads = cfg.num_attention_heads
        head_dim = hidden // heads

        def project(name):  # [B, L, H] -> [B, L, heads, head_dim]
            return _dense(cfg, hidden, name)(x).reshape(batch, seq_len, heads, head_dim)

        q, k, v = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(
            jnp.float32(head_dim))
        key_mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, L]
        # A finite fill (not -inf): an all-padding row gets a uniform softmax, never NaN.
        scores = jnp.where(key_mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(cfg.compute_dtype), v)
        return _dense(cfg, hidden, "output")(context.reshape(batch, seq_len, hidden))


class BertLayer(nn.Module):
    """Post-LN transformer block (BERT): attention + FFN, each residual + LayerNorm."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask, deterministic):
        cfg = self.config
        dropout = nn.Dropout(cfg.hidden_dropout_prob)
        attn = BertSelfAttention(cfg, name="attention")(x, attention_mask, deterministic)
        x = _layer_norm(cfg, "attention_layer_norm")(x + dropout(attn, deterministic=deterministic))
        h = ACTIVATIONS[cfg.hidden_act](_dense(cfg, cfg.intermediate_size, "intermediate")(x))
        h = _dense(cfg, cfg.hidden_size, "output")(h)
        return _layer_norm(cfg, "output_layer_norm")(x + dropout(h, deterministic=deterministic))


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_mask, deterministic):
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, name=f"layer_{i}")(x, attention_mask, deterministic)
        return x


class BertClassifier(nn.Module):
    """BERT/RoBERTa encoder + classification head -> ModelOutput(logits, features).

    Head (both model types, HF eval semantics): features = tanh(pooler(h[:, 0])),
    logits = classifier(dropout(features)). RoBERTa's head additionally applies
    dropout to h[:, 0] before `pooler`, as HF does (identity at eval).
    """

    config: BertConfig

    def setup(self):
        cfg = self.config
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = _dense(cfg, cfg.hidden_size, "pooler")
        self.classifier = _dense(cfg, cfg.num_labels, "classifier")
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def embed_words(self, input_ids: jax.Array) -> jax.Array:
        """Word-embedding lookup E[x] only: [B, L] int -> [B, L, H] float32."""
        return self.embeddings.embed_words(input_ids)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None,
                 inputs_embeds=None, deterministic: bool = True) -> ModelOutput:
        """input_ids/attention_mask/token_type_ids [B, L]; inputs_embeds [B, L, H].

        Returns logits [B, C] float32 and features [B, H] float32 (classifier input).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        word_embeds = self.embed_words(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is None:
            attention_mask = jnp.ones(word_embeds.shape[:2], jnp.int32)
        x = self.embeddings(word_embeds, attention_mask, token_type_ids, deterministic)
        x = self.encoder(x, attention_mask, deterministic)
        first = x[:, 0]
        if self.config.model_type == "roberta":
            first = self.dropout(first, deterministic=deterministic)
        features = jnp.tanh(self.pooler(first))
        logits = self.classifier(self.dropout(features, deterministic=deterministic))
        return ModelOutput(logits=logits.astype(jnp.float32), features=features.astype(jnp.float32))
