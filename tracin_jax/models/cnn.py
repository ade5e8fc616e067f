"""The paper's text CNN (sec. 3.2): embedding, conv1d k=5, k=5, k=1, max pool, dense.

    e = E[x] * mask                                   [B, L, D]  (pad rows zeroed)
    h = relu(conv_j(h)) * mask, j = 0, 1, 2           [B, L, F]  (SAME padding)
    a = max over non-pad positions of h               [B, F]     (features)
    logits = classifier(dropout(a))                   [B, C]

Re-masking after every conv makes padded positions behave exactly like the
convolution's own zero padding, so appending padding never changes the logits,
and the gradient w.r.t. the embedding at a pad position is exactly zero.
Parameters: embeddings/word_embeddings/embedding, conv_{0,1,2}/{kernel,bias},
classifier/{kernel,bias}.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tracin_jax.models.outputs import ModelOutput, lookup_words
from tracin_jax.models.bert import COMPUTE_DTYPES


@dataclasses.dataclass(frozen=True, kw_only=True)
class CNNConfig:
    """Text CNN architecture; defaults follow the paper (sec. 3.2: embedding 128)."""

    vocab_size: int
    embed_dim: int = 128
    filters: int = 128  # channels of every conv layer
    kernel_sizes: tuple[int, ...] = (5, 5, 1)
    num_labels: int
    dropout_rate: float = 0.1
    pad_token_id: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernel_sizes))
        if not self.kernel_sizes or min(self.kernel_sizes) < 1:
            raise ValueError(f"kernel_sizes must be positive, got {self.kernel_sizes}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(COMPUTE_DTYPES)}, got {self.dtype!r}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")


class _WordEmbeddings(nn.Module):
    """Holds the table at embeddings/word_embeddings/embedding, like the BERT models."""

    config: CNNConfig

    def setup(self):
        cfg = self.config
        self.word_embeddings = nn.Embed(cfg.vocab_size, cfg.embed_dim, param_dtype=jnp.float32,
                                        dtype=jnp.float32)

    def __call__(self, input_ids):
        return lookup_words(self.word_embeddings, input_ids, self.config.vocab_size)


class CNNClassifier(nn.Module):
    config: CNNConfig

    def setup(self):
        cfg = self.config
        dtype = COMPUTE_DTYPES[cfg.dtype]
        self.embeddings = _WordEmbeddings(cfg)
        self.convs = [
            nn.Conv(cfg.filters, kernel_size=(k,), padding="SAME", use_bias=True, dtype=dtype,
                    param_dtype=jnp.float32, name=f"conv_{j}")
            for j, k in enumerate(cfg.kernel_sizes)
        ]
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.classifier = nn.Dense(cfg.num_labels, dtype=dtype, param_dtype=jnp.float32,
                                   name="classifier")

    def embed_words(self, input_ids: jax.Array) -> jax.Array:
        """Word-embedding lookup E[x] only: [B, L] int -> [B, L, D] float32."""
        return self.embeddings(input_ids)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None,
                 inputs_embeds=None, deterministic: bool = True) -> ModelOutput:
        """Same signature as BertClassifier; token_type_ids is accepted and ignored."""
        del token_type_ids
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_words(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is None:
            attention_mask = jnp.ones(x.shape[:2], jnp.int32)
        dtype = COMPUTE_DTYPES[self.config.dtype]
        mask = attention_mask.astype(bool)[..., None]  # [B, L, 1]
        h = (x * mask).astype(dtype)
        for conv in self.convs:
            h = jax.nn.relu(conv(h)) * mask
        h = h.astype(jnp.float32)
        # Pad positions are excluded from the max; an all-padding row pools to zeros.
        pooled = jnp.max(jnp.where(mask, h, jnp.finfo(jnp.float32).min), axis=1)
        features = jnp.where(jnp.any(mask, axis=1), pooled, 0.0)
        logits = self.classifier(self.dropout(features, deterministic=deterministic))
        return ModelOutput(logits=logits.astype(jnp.float32), features=features)
