"""TracIn-WE pair scores between blocks of per-token vectors (eq. 4 / eq. 6, docs/method.md).

For examples a and b with per-token vectors (ids padded with -1, each token at
most once per example, as ``token_vectors`` returns them) the per-checkpoint score is

    score(a, b) = Σ_{w ∈ a ∩ b} ⟨G_w(a), G_w(b)⟩,

computed here as the plain dot product: "score > 0 = proponent" holds once the
caller multiplies by the learning rate η_c > 0 (``methods.retrieval`` sums over checkpoints).
All scores are accumulated in float32. Two interchangeable implementations:

- ``pair_scores_dense``: one masked block GEMM on the accelerator (jit-able).
- ``pair_scores_sparse``: a host-side inverted-index join (one small GEMM per
  shared token), cheap when examples share few tokens.

``default_backend()`` names the faster one for the device: the join on CPU, the dense
GEMM on accelerators (``methods.tracin_we`` scores with it).

Both also accept ids repeated within an example: every (t, s) slot pair with
equal ids counts, which is the same bilinear form.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tracin_jax.kernels.token_vectors import PAD_ID

# Default memory bound of one dense block: [M*T, block*S] float32 dot products.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**26  # 256 MiB
# Scores are sums of many products: do not let the GPU drop to TF32/bf16 passes.
_PRECISION = jax.lax.Precision.HIGHEST
# Sparse join: a token shared by this many (a row, b row) pairs or more gets its own
# GEMM; rarer ones are cheaper as gathered row dot products (tools/bench_kernel.py).
_GEMM_MIN_PAIRS = 16


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


def gram(x, y):
    """x [P, D] · y [Q, D]ᵀ -> [P, Q] float32 at full precision (bf16/f16 inputs upcast)."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.dtype != y.dtype or jnp.dtype(x.dtype).itemsize < 4:
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
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
        dots = gram(a_flat, vecs)  # [M*T, block*S]
        shared = (a_id_flat[:, None] == ids[None, :]) & a_valid[:, None]
        return jnp.where(shared, dots, 0.0).reshape(m, t, block, s).sum(axis=(1, 3))

    scores = jax.lax.map(one_block, (b_ids_blocks, b_vec_blocks))  # [blocks, M, block]
    return jnp.moveaxis(scores, 0, 1).reshape(m, num_blocks * block)[:, :n]


def _slot_index(ids: np.ndarray):
    """Inverted index of one block over its slots (no vectors are copied).

    Returns ``tokens [U]`` (sorted unique ids), ``bounds [U+1]``, ``slots [K]`` (flat
    slot indices ``row * width + t`` sorted by (token, row), so ``slots[bounds[u]:
    bounds[u+1]]`` are the slots holding ``tokens[u]``) and ``repeats`` (some row
    holds a token in more than one slot).
    """
    num_rows, width = ids.shape
    flat = ids.reshape(-1).astype(np.int64)
    slots = np.flatnonzero(flat != PAD_ID)
    key = flat[slots] * max(num_rows, 1) + slots // width  # (token, row), one int64 sort
    order = np.argsort(key, kind="stable")
    slots, key = slots[order], key[order]
    tokens = key // max(num_rows, 1)
    starts = np.flatnonzero(np.r_[True, tokens[1:] != tokens[:-1]]) if tokens.size else slots
    repeats = bool(np.any(key[1:] == key[:-1]))
    return tokens[starts], np.r_[starts, tokens.size], slots, repeats


def _gather_rows(flat_vecs: np.ndarray, slots: np.ndarray, width: int, merge_repeats: bool):
    """Rows and float32 vectors of ``slots`` (sorted by row), repeated rows summed."""
    rows, vecs = slots // width, flat_vecs[slots].astype(np.float32, copy=False)
    if merge_repeats:
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        if starts.size < rows.size:
            rows, vecs = rows[starts], np.add.reduceat(vecs, starts, axis=0)
    return rows, vecs


@functools.cache
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it BLAS keeps its own thread count
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def _single_threaded_blas():
    """Many small GEMMs: one BLAS thread is faster, and robust on a busy machine."""
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


class _ASide:
    """The first block of ``pair_scores_sparse`` prepared once: its inverted index, its vectors
    as float32, and each token's gathered rows (on first use). Retrieval scores one test block
    against every training shard, so this work is done once per test block, not per shard."""

    def __init__(self, ids, vecs):
        self.ids = np.asarray(ids)
        if self.ids.size and self.ids.min() < PAD_ID:
            raise ValueError(f"a_ids holds negative ids other than {PAD_ID}: min {self.ids.min()}")
        m, t = self.ids.shape
        self.flat = np.asarray(vecs).reshape(m * t, np.shape(vecs)[-1]).astype(np.float32, copy=False)
        self.index = _slot_index(self.ids)
        self._rows = {}

    def rows(self, u: int):
        if u not in self._rows:
            _, bounds, slots, repeats = self.index
            self._rows[u] = _gather_rows(self.flat, slots[bounds[u]:bounds[u + 1]], self.ids.shape[1], repeats)
        return self._rows[u]


def prepare_a_side(a_ids, a_vecs) -> _ASide:
    """The first block of ``pair_scores_sparse`` prepared for scoring against many second
    blocks (``pair_scores_sparse(..., a_side=prepare_a_side(a_ids, a_vecs))``)."""
    return _ASide(a_ids, a_vecs)


def pair_scores_sparse(a_ids, a_vecs, b_ids, b_vecs, *, a_side: _ASide | None = None) -> np.ndarray:
    """All-pairs TracIn-WE scores by an inverted-index join on the host (numpy).

    Same contract and result as ``pair_scores_dense``: for every token w shared by
    the two blocks, ``scores[A_w, B_w] += V_a[w] · V_b[w]ᵀ`` where A_w, B_w are the
    rows containing w. Cost ~ Σ_w |A_w|·|B_w|·D (the useful work) instead of
    M·T·N·S·D. Tokens with at least ``_GEMM_MIN_PAIRS`` row pairs get one GEMM each
    (e.g. [CLS]/[SEP] against every row); the rare rest are scored pair by pair in
    one vectorised pass.

    Args: a_ids [M, T], a_vecs [M, T, D], b_ids [N, S], b_vecs [N, S, D]
      (numpy or jax arrays, any float dtype; ids ≥ 0 or -1 for unused slots).
      a_side: ``prepare_a_side(a_ids, a_vecs)`` of these same arrays, reused across calls
      (the a block's index, float32 vectors and gathered rows are then built once).
    Returns: [M, N] float32 numpy array (accumulated in float64).
    """
    _check_pair(a_ids, a_vecs, b_ids, b_vecs)
    side = a_side if a_side is not None else _ASide(a_ids, a_vecs)
    if side.ids.shape != np.shape(a_ids):
        raise ValueError(f"a_side was prepared for a block of shape {side.ids.shape}, not {np.shape(a_ids)}")
    b_ids = np.asarray(b_ids)
    if b_ids.size and b_ids.min() < PAD_ID:
        raise ValueError(f"b_ids holds negative ids other than {PAD_ID}: min {b_ids.min()}")
    (m, t), (n, s), d = side.ids.shape, b_ids.shape, np.shape(a_vecs)[-1]
    a_flat = side.flat
    b_flat = np.asarray(b_vecs).reshape(n * s, d)
    scores = np.zeros((m, n), np.float64)
    if m == 0 or n == 0:
        return scores.astype(np.float32)
    a_tokens, a_bounds, a_slots, a_repeats = side.index
    b_tokens, b_bounds, b_slots, b_repeats = _slot_index(b_ids)
    _, ua, ub = np.intersect1d(a_tokens, b_tokens, assume_unique=True, return_indices=True)
    a_count, b_count = a_bounds[ua + 1] - a_bounds[ua], b_bounds[ub + 1] - b_bounds[ub]
    gemm = a_count * b_count >= _GEMM_MIN_PAIRS
    with _single_threaded_blas():
        for u, v in zip(ua[gemm], ub[gemm]):
            a_rows, a_block = side.rows(u)
            b_rows, b_block = _gather_rows(b_flat, b_slots[b_bounds[v]:b_bounds[v + 1]], s, b_repeats)
            products = a_block @ b_block.T
            # Rows are unique and sorted after merging, so a block that covers all
            # rows is arange(m) / arange(n): plain slices replace fancy indexing.
            if a_rows.size == m and b_rows.size == n:
                scores += products
            elif a_rows.size == m:
                scores[:, b_rows] += products
            else:
                scores[np.ix_(a_rows, b_rows)] += products
    if not gemm.all():
        # Every (a slot, b slot) pair of the remaining tokens, enumerated without a loop.
        ua, ub, a_count, b_count = ua[~gemm], ub[~gemm], a_count[~gemm], b_count[~gemm]
        pairs = a_count * b_count
        token = np.repeat(np.arange(ua.size), pairs)
        within = np.arange(pairs.sum()) - np.repeat(np.cumsum(pairs) - pairs, pairs)
        a_pos = a_slots[a_bounds[ua][token] + within // b_count[token]]
        b_pos = b_slots[b_bounds[ub][token] + within % b_count[token]]
        dots = np.einsum("pd,pd->p", a_flat[a_pos].astype(np.float32, copy=False),
                         b_flat[b_pos].astype(np.float32, copy=False))
        # bincount adds repeated cells (a token repeated within a row) correctly.
        cells = (a_pos // t) * n + b_pos // s
        scores += np.bincount(cells, weights=dots, minlength=m * n).reshape(m, n)
    return scores.astype(np.float32)


def default_backend() -> str:
    """``"sparse"`` (host inverted-index join) on CPU, ``"dense"`` (masked GEMM) elsewhere.

    On CPU the join does only the useful work and scores ~10x faster than the dense
    GEMM (tools/bench_kernel.py, README "Performance"); on accelerators the dense
    GEMM runs on the device at full rate (confirm with the same script).
    """
    return "sparse" if jax.default_backend() == "cpu" else "dense"


def pair_token_contributions(
    a_ids: jax.Array, a_vecs: jax.Array, b_ids: jax.Array, b_vecs: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Word-level decomposition of one pair's score (paper sec. 4.3; docs/method.md).

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
    dots = gram(jnp.asarray(a_vecs, dtype), jnp.asarray(b_vecs, dtype))  # [T, S]
    shared = (a_ids[:, None] == b_ids[None, :]) & (a_ids[:, None] != PAD_ID)
    contributions = jnp.where(shared, dots, 0.0).sum(axis=1)
    has_shared = shared.any(axis=1)
    order = jnp.argsort(~has_shared, stable=True)
    used = has_shared[order]
    return (jnp.where(used, a_ids[order], PAD_ID).astype(jnp.int32),
            jnp.where(used, contributions[order], 0.0))


pair_token_contributions_jit = jax.jit(pair_token_contributions)
