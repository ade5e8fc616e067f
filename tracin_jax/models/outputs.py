"""What every model returns, and where its word-embedding table lives."""
from __future__ import annotations

from typing import NamedTuple

import jax


class ModelOutput(NamedTuple):
    logits: jax.Array  # [B, C] float32
    features: jax.Array  # [B, H] float32, input of the classifier


WORD_EMBEDDING_PATH = ("embeddings", "word_embeddings", "embedding")
