"""Per-token word-embedding gradient vectors (docs/method.md "Word-embedding gradients").

For one example with token ids ``x = (x_1..x_L)`` and per-position gradients
``g_i = dℓ/de_i`` (``e_i = E[x_i]``), the per-token vector of token ``w`` is

    G_w = Σ_{i: x_i = w, mask_i} g_i,

which is row ``w`` of the dense embedding-table gradient ``dℓ/dE`` (eq. 3).
The top-k variant (eq. 5) first keeps the k non-pad positions with the largest
``‖g_i‖₂`` (ties: lower position first) and sums only those.

All functions here are pure, fixed-shape and work under ``jit`` and ``vmap``
(``k`` and ``topk_by`` are static). Outputs have ``T = L`` slots when ``k`` is
None, else ``T = min(k, L)``; unique tokens fill the first slots in order of
their first kept position, unused slots hold id ``-1`` and a zero vector.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = -1  # id of an unused output slot
TOPK_BY = ("position", "token")
_LAST = jnp.inf  # sort key that puts excluded entries after every real one


def _check_k(k) -> None:
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be None or a positive int, got {k!r}")


def _check_inputs(token_ids, position_grads, mask, k, topk_by) -> None:
    _check_k(k)
    if topk_by not in TOPK_BY:
        raise ValueError(f"topk_by must be one of {TOPK_BY}, got {topk_by!r}")
    if jnp.ndim(token_ids) != 1:
        raise ValueError(f"token_ids must be [L], got shape {jnp.shape(token_ids)}")
    if jnp.ndim(position_grads) != 2:
        raise ValueError(f"position_grads must be [L, D], got shape {jnp.shape(position_grads)}")
    length = jnp.shape(token_ids)[0]
    if jnp.shape(position_grads)[0] != length or jnp.shape(mask) != (length,):
        raise ValueError(
            f"shapes disagree: token_ids {jnp.shape(token_ids)}, position_grads "
            f"{jnp.shape(position_grads)}, mask {jnp.shape(mask)}; expected [L], [L, D], [L]")


def position_norms(position_grads: jax.Array, mask: jax.Array) -> jax.Array:
    """``‖g_i‖₂`` per position in float32, 0 at pad positions.

    position_grads: [..., L, D]; mask: [..., L] (True = real token) -> [..., L].
    """
    grads = jnp.asarray(position_grads).astype(jnp.float32)
    norms = jnp.sqrt(jnp.sum(grads * grads, axis=-1))
    return jnp.where(jnp.asarray(mask, bool), norms, jnp.float32(0.0))


def _merge_by_token(token_ids, grads, keep):
    """Sums kept rows of ``grads`` into the slot of each token's first kept position.

    Returns ``is_first [L]`` (kept and no earlier kept position has the same id)
    and ``merged [L, D]`` (row i = G_{x_i} restricted to kept positions if
    ``is_first[i]``, else zero). Uses an [L, L] equality mask: fine for L ≤ 512.
    """
    length = token_ids.shape[0]
    positions = jnp.arange(length, dtype=jnp.int32)
    same = (token_ids[:, None] == token_ids[None, :]) & keep[:, None] & keep[None, :]
    first = jnp.argmax(same, axis=1).astype(jnp.int32)  # first True; kept rows have one
    segment = jnp.where(keep, first, length)  # dropped rows go to an overflow segment
    merged = jax.ops.segment_sum(
        jnp.where(keep[:, None], grads, 0.0), segment, num_segments=length + 1)[:length]
    is_first = keep & (first == positions)
    return is_first, merged


def _select_first_by_norm(norms, candidates, k):
    """Boolean [L]: the ≤ k candidates with the largest norm, ties by lower position."""
    order = jnp.argsort(jnp.where(candidates, -norms, _LAST), stable=True)
    chosen = jnp.zeros(norms.shape, bool).at[order[:k]].set(True)
    return chosen & candidates


def token_vectors(
    token_ids: jax.Array,
    position_grads: jax.Array,
    mask: jax.Array,
    k: int | None = None,
    *,
    topk_by: str = "position",
) -> tuple[jax.Array, jax.Array]:
    """Per-token gradient vectors ``G_w`` (or ``G^k_w``) of one example.

    Args:
      token_ids: [L] int token ids (values at pad positions are ignored; ids at
        real positions must be ≥ 0, see ``validate_token_ids``).
      position_grads: [L, D] ``g_i = dℓ/de_i`` in any float dtype (accumulated in float32).
      mask: [L] bool, True for real tokens; pad positions never contribute.
      k: None for the exact vectors; else the top-k approximation.
      topk_by: ``"position"`` (eq. 5: keep the k positions with the largest
        ``‖g_i‖``, ties by lower position, then merge per token) or ``"token"``
        (merge first, keep the k tokens with the largest ``‖G_w‖``, ties by
        first position, so repeated words are never split).

    Returns:
      unique_ids: [T] int32, the kept tokens in order of first kept position,
        padded with -1; T = L if k is None else min(k, L).
      vectors: [T, D] float32, ``G_w`` per slot, zero in padded slots.
    """
    _check_inputs(token_ids, position_grads, mask, k, topk_by)
    token_ids = jnp.asarray(token_ids).astype(jnp.int32)
    grads = jnp.asarray(position_grads).astype(jnp.float32)
    mask = jnp.asarray(mask, bool)
    length = token_ids.shape[0]
    num_slots = length if k is None else min(k, length)

    if k is not None and topk_by == "position":
        keep = _select_first_by_norm(position_norms(grads, mask), mask, k)
    else:
        keep = mask
    is_first, merged = _merge_by_token(token_ids, grads, keep)
    if k is not None and topk_by == "token":
        token_norms = jnp.sqrt(jnp.sum(merged * merged, axis=-1))
        is_first = _select_first_by_norm(token_norms, is_first, k)

    # Stable sort on "not a first occurrence" moves first occurrences to the
    # front in position order.
    slots = jnp.argsort(~is_first, stable=True)[:num_slots]
    used = is_first[slots]
    unique_ids = jnp.where(used, token_ids[slots], PAD_ID).astype(jnp.int32)
    vectors = jnp.where(used[:, None], merged[slots], 0.0)
    return unique_ids, vectors


@functools.partial(jax.jit, static_argnames=("k", "topk_by"))
def token_vectors_batch(
    token_ids: jax.Array,
    position_grads: jax.Array,
    mask: jax.Array,
    k: int | None = None,
    *,
    topk_by: str = "position",
) -> tuple[jax.Array, jax.Array]:
    """``token_vectors`` over a batch, jitted: [B, L], [B, L, D], [B, L] -> [B, T], [B, T, D]."""
    if jnp.ndim(token_ids) != 2:
        raise ValueError(f"token_ids must be [B, L], got shape {jnp.shape(token_ids)}")
    one = functools.partial(token_vectors, k=k, topk_by=topk_by)
    return jax.vmap(one)(token_ids, position_grads, mask)


def validate_token_ids(token_ids, mask, vocab_size: int) -> None:
    """Host-side check: every real (unmasked) token id lies in ``[0, vocab_size)``.

    docs/method.md: ids outside the embedding table are an error, never a silent zero.
    token_ids, mask: [..., L]. Raises ValueError naming the offending ids.
    """
    ids = np.asarray(token_ids)
    real = np.asarray(mask, bool)
    if ids.shape != real.shape:
        raise ValueError(f"token_ids shape {ids.shape} != mask shape {real.shape}")
    bad = real & ((ids < 0) | (ids >= vocab_size))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} token ids outside the embedding table [0, {vocab_size}): "
            f"e.g. {sorted(set(ids[bad].tolist()))[:10]}")
