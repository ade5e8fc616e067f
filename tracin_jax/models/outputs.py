"""What every model shares: its outputs, where its word-embedding table lives, and the one
checked lookup of token ids in that table."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tracin_jax.errors import DataError


class ModelOutput(NamedTuple):
    logits: jax.Array  # [B, C] float32
    features: jax.Array  # [B, H] float32, input of the classifier


WORD_EMBEDDING_PATH = ("embeddings", "word_embeddings", "embedding")


def check_token_ids(input_ids, vocab_size: int) -> None:
    """Host-side check that every id indexes the embedding table (0 <= id < vocab_size).

    JAX gathers never fail on bad indices (an id past the table reads garbage or NaN, a
    negative one wraps around to a real row), so without this an out-of-table id would
    silently give a plausible loss (the authors' notebook fed 30,521 ids into a 25,000-row
    table). Raises ``DataError`` naming the offending id, its row and position, and the size.
    """
    ids = np.asarray(input_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.size == 0:
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = np.argwhere(bad)[0]
        at = f"row {where[0]}" + (f", position {where[1]}" if len(where) > 1 else "")
        raise DataError(f"token id {int(ids[tuple(where)])} at {at} is outside the embedding table of "
                        f"{vocab_size} rows (valid ids 0..{vocab_size - 1}; {int(bad.sum())} ids out of range)",
                        "the ids come from another tokenizer or vocabulary than the model's")


def lookup_words(embed, input_ids, vocab_size: int):
    """``E[x]`` through the ``nn.Embed`` ``embed``, with ids checked.

    Concrete ids (eager calls, every public entry point) are checked on the host
    (``check_token_ids``: an error naming the id). Inside ``jit`` the ids are traced and
    cannot raise; there an id outside ``[0, vocab_size)`` gives a NaN embedding row, so the
    loss and gradients turn NaN and the stage that sees them stops (training, gradient
    stores and scoring all refuse non-finite numbers) instead of reading another token's row.
    """
    if not isinstance(input_ids, jax.core.Tracer):
        check_token_ids(input_ids, vocab_size)
    ids = jnp.asarray(input_ids)
    valid = (ids >= 0) & (ids < vocab_size)
    rows = embed(jnp.where(valid, ids, 0))
    return jnp.where(valid[..., None], rows, jnp.nan)
