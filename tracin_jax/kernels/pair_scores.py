"""TracIn-WE pair scores between blocks of per-token vectors (SPEC eq. 4 / eq. 6).

For examples a and b with per-token vectors (ids padded with -1, each token at
most once per example, as ``token_vectors`` returns them) the per-checkpoint score is

    score(a, b) = Σ_{w ∈ a ∩ b} ⟨G_w(a), G_w(b)⟩,

computed here as the plain dot product: "score > 0 = proponent" holds once the
caller multiplies by the learning rate η_c > 0 (``weighted_sum_over_checkpoints``).
All scores are accumulated in float32. Two interchangeable implementations:

- ``pair_scores_dense``: one masked block GEMM on the accelerator (jit-able).
- ``pair_scores_sparse``: a host-side inverted-index join (one small GEMM per
  shared token), cheap when examples share few tokens.

Both also accept ids repeated within an example: every (t, s) slot pair with
equal ids counts, which is the same bilinear form.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = -1
# Default memory bound of one dense block: [M*T, block*S] float32 dot products.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**26  # 256 MiB
# Scores are sums of many products: do not let the GPU drop to TF32/bf16 passes.
_PRECISION = jax.lax.Precision.HIGHEST


def _check_block(name, ids, vecs):
    if jnp.ndim(ids) != 2 or jnp.ndim(vecs) != 3 or jnp.shape(vecs)[:2] != jnp.shape(ids):
        raise ValueError(
            f"{name}: expected ids [rows, T] and vecs [rows, T, D], got "
            f"{jnp.shape(ids)} and {jnp.shape(vecs)}")


def _check_pair(a_ids, a_vecs, b_ids, b_vecs):
    _check_block("a", a_ids, a_vecs)
    _check_block("b", b_ids, b_vecs)
    if jnp.shape(a_vecs)[-1] != jnp.shape(b_vecs)[-1]:
        raise ValueError(
            f"vector dims differ: a has D={jnp.shape(a_vecs)[-1]}, b has D={jnp.shape(b_vecs)[-1]}")


def _dot_t(x, y):
    """x [P, D] · y [Q, D]ᵀ -> [P, Q] float32 at full precision."""
    return jax.lax.dot_general(
        x, y, (((1,), (1,)), ((), ())),
        precision=_PRECISION, preferred_element_type=jnp.float32)


def _auto_block_size(m_slots: int, s_slots: int, n_rows: int) -> int:
    per_row = max(1, m_slots * s_slots)
    return int(max(1, min(n_rows, DEFAULT_MAX_BLOCK_ELEMENTS // per_row)))


def pair_scores_dense(
    a_ids: jax.Array,
    a_vecs: jax.Array,
    b_ids: jax.Array,
    b_vecs: jax.Array,
    *,
    block_size: int | None = None,
) -> jax.Array:
    """All-pairs TracIn-WE scores by a masked dense GEMM, chunked over b.

    ``scores[m, n] = Σ_{t,s: a_ids[m,t] = b_ids[n,s] ≠ -1} ⟨a_vecs[m,t], b_vecs[n,s]⟩``.

    Args:
      a_ids: [M, T] int, a_vecs: [M, T, D]; b_ids: [N, S] int, b_vecs: [N, S, D]
        (any float dtype; products accumulate in float32).
      block_size: rows of b per GEMM (static); memory is M·T·block_size·S
        floats. None picks the largest block within 2**26 elements.

    Returns: [M, N] float32.
    """
    a_vecs, b_vecs = jnp.asarray(a_vecs), jnp.asarray(b_vecs)
    _check_pair(a_ids, a_vecs, b_ids, b_vecs)
    if block_size is not None and (isinstance(block_size, bool) or int(block_size) < 1):
        raise ValueError(f"block_size must be None or a positive int, got {block_size!r}")
    m, t, d = a_vecs.shape
    n, s, _ = b_vecs.shape
    if m == 0 or n == 0:
        return jnp.zeros((m, n), jnp.float32)
    dtype = jnp.promote_types(a_vecs.dtype, b_vecs.dtype)
    a_flat = jnp.asarray(a_vecs, dtype).reshape(m * t, d)
    a_id_flat = jnp.asarray(a_ids).astype(jnp.int32).reshape(m * t)
    a_valid = a_id_flat != PAD_ID

    block = min(int(block_size), n) if block_size is not None else _auto_block_size(m * t, s, n)
    num_blocks = -(-n // block)
    pad = num_blocks * block - n
    b_ids_blocks = jnp.pad(jnp.asarray(b_ids).astype(jnp.int32), ((0, pad), (0, 0)),
                           constant_values=PAD_ID).reshape(num_blocks, block * s)
    b_vec_blocks = jnp.pad(jnp.asarray(b_vecs, dtype), ((0, pad), (0, 0), (0, 0))
                           ).reshape(num_blocks, block * s, d)

    def one_block(args):
        ids, vecs = args  # [block*S], [block*S, D]
        dots = _dot_t(a_flat, vecs)  # [M*T, block*S]
        shared = (a_id_flat[:, None] == ids[None, :]) & a_valid[:, None]
        return jnp.where(shared, dots, 0.0).reshape(m, t, block, s).sum(axis=(1, 3))

    scores = jax.lax.map(one_block, (b_ids_blocks, b_vec_blocks))  # [blocks, M, block]
    return jnp.moveaxis(scores, 0, 1).reshape(m, num_blocks * block)[:, :n]


def _index_by_token(ids: np.ndarray, vecs: np.ndarray):
    """Inverted index of one block: tokens, group bounds, rows and merged vectors.

    Returns ``tokens [U]`` (sorted unique ids), ``bounds [U+1]``, ``rows [K]`` and
    ``merged [K, D]`` float32 such that rows/merged[bounds[u]:bounds[u+1]] are the
    examples containing ``tokens[u]`` with their (row, token)-summed vectors.
    """
    num_rows, slots = ids.shape
    flat_ids = ids.reshape(-1).astype(np.int64)
    flat_rows = np.repeat(np.arange(num_rows, dtype=np.int64), slots)
    valid = flat_ids != PAD_ID
    flat_ids, flat_rows = flat_ids[valid], flat_rows[valid]
    flat_vecs = vecs.reshape(num_rows * slots, -1)[valid]
    order = np.lexsort((flat_rows, flat_ids))
    flat_ids, flat_rows, flat_vecs = flat_ids[order], flat_rows[order], flat_vecs[order]
    if flat_ids.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, np.zeros(1, np.int64), empty, np.zeros((0, vecs.shape[-1]), np.float32)
    new_pair = np.r_[True, (flat_ids[1:] != flat_ids[:-1]) | (flat_rows[1:] != flat_rows[:-1])]
    pair_starts = np.flatnonzero(new_pair)
    merged = np.add.reduceat(flat_vecs.astype(np.float32), pair_starts, axis=0)
    pair_ids, rows = flat_ids[pair_starts], flat_rows[pair_starts]
    token_starts = np.flatnonzero(np.r_[True, pair_ids[1:] != pair_ids[:-1]])
    return pair_ids[token_starts], np.r_[token_starts, pair_ids.size], rows, merged


def pair_scores_sparse(a_ids, a_vecs, b_ids, b_vecs) -> np.ndarray:
    """All-pairs TracIn-WE scores by an inverted-index join on the host (numpy).

    Same contract and result as ``pair_scores_dense``: for every token w shared by
    the two blocks, ``scores[A_w, B_w] += V_a[w] · V_b[w]ᵀ`` where A_w, B_w are the
    rows containing w. Cost ~ Σ_w |A_w|·|B_w|·D instead of M·T·N·S·D.

    Args: a_ids [M, T], a_vecs [M, T, D], b_ids [N, S], b_vecs [N, S, D]
      (numpy or jax arrays; ids ≥ 0 or -1 for unused slots).
    Returns: [M, N] float32 numpy array.
    """
    _check_pair(a_ids, a_vecs, b_ids, b_vecs)
    a_ids, b_ids = np.asarray(a_ids), np.asarray(b_ids)
    for name, ids in (("a_ids", a_ids), ("b_ids", b_ids)):
        if ids.size and ids.min() < PAD_ID:
            raise ValueError(f"{name} holds negative ids other than {PAD_ID}: min {ids.min()}")
    a_tokens, a_bounds, a_rows, a_merged = _index_by_token(a_ids, np.asarray(a_vecs))
    b_tokens, b_bounds, b_rows, b_merged = _index_by_token(b_ids, np.asarray(b_vecs))
    # float64 accumulator: each cell sums one float32 GEMM entry per shared token.
    scores = np.zeros((a_ids.shape[0], b_ids.shape[0]), np.float64)
    _, a_groups, b_groups = np.intersect1d(
        a_tokens, b_tokens, assume_unique=True, return_indices=True)
    for ua, ub in zip(a_groups, b_groups):
        a_lo, a_hi = a_bounds[ua], a_bounds[ua + 1]
        b_lo, b_hi = b_bounds[ub], b_bounds[ub + 1]
        # Rows are unique within a group ((row, token) pairs were merged), so
        # fancy-index += never drops a repeated cell.
        scores[np.ix_(a_rows[a_lo:a_hi], b_rows[b_lo:b_hi])] += (
            a_merged[a_lo:a_hi] @ b_merged[b_lo:b_hi].T)
    return scores.astype(np.float32)


def pair_token_contributions(
    a_ids: jax.Array, a_vecs: jax.Array, b_ids: jax.Array, b_vecs: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Word-level decomposition of one pair's score (SPEC sec. 4.3).

    Args: a_ids [T], a_vecs [T, D], b_ids [S], b_vecs [S, D] (ids padded with -1).
    Returns:
      token_ids: [T] int32, the tokens of a that also occur in b, in a's slot
        order, padded with -1.
      contributions: [T] float32, ``⟨G_w(a), G_w(b)⟩`` per token (0 in padded
        slots); they sum to the pair score of ``pair_scores_dense``.
    """
    if jnp.ndim(a_ids) != 1 or jnp.ndim(b_ids) != 1:
        raise ValueError(f"expected a_ids [T], b_ids [S], got {jnp.shape(a_ids)}, {jnp.shape(b_ids)}")
    a_vecs, b_vecs = jnp.asarray(a_vecs), jnp.asarray(b_vecs)
    _check_pair(jnp.reshape(a_ids, (1, -1)), jnp.expand_dims(a_vecs, 0),
                jnp.reshape(b_ids, (1, -1)), jnp.expand_dims(b_vecs, 0))
    a_ids = jnp.asarray(a_ids).astype(jnp.int32)
    b_ids = jnp.asarray(b_ids).astype(jnp.int32)
    dtype = jnp.promote_types(a_vecs.dtype, b_vecs.dtype)
    dots = _dot_t(jnp.asarray(a_vecs, dtype), jnp.asarray(b_vecs, dtype))  # [T, S]
    shared = (a_ids[:, None] == b_ids[None, :]) & (a_ids[:, None] != PAD_ID)
    contributions = jnp.where(shared, dots, 0.0).sum(axis=1)
    has_shared = shared.any(axis=1)
    order = jnp.argsort(~has_shared, stable=True)
    used = has_shared[order]
    return (jnp.where(used, a_ids[order], PAD_ID).astype(jnp.int32),
            jnp.where(used, contributions[order], 0.0))


def weighted_sum_over_checkpoints(scores, learning_rates) -> jax.Array:
    """``Σ_c η_c · scores[c]``: scores [C, ...], learning_rates [C] -> [...] float32."""
    scores = jnp.asarray(scores, jnp.float32)
    learning_rates = jnp.asarray(learning_rates, jnp.float32)
    if learning_rates.ndim != 1 or scores.ndim < 1 or scores.shape[0] != learning_rates.shape[0]:
        raise ValueError(
            f"expected scores [C, ...] and learning_rates [C], got {scores.shape} "
            f"and {learning_rates.shape}")
    return jnp.tensordot(learning_rates, scores, axes=1, precision=_PRECISION)


pair_scores_dense_jit = jax.jit(pair_scores_dense, static_argnames=("block_size",))
pair_token_contributions_jit = jax.jit(pair_token_contributions)
