"""Tests for tracin_jax.kernels.pair_scores: dense GEMM = inverted-index join =
brute force; score = Σ token contributions; score = ⟨dℓ(a)/dE, dℓ(b)/dE⟩."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracin_jax.kernels.pair_scores import (
    pair_scores_dense,
    pair_scores_sparse,
    pair_token_contributions,
    pair_token_contributions_jit,
    prepare_a_side,
)
from tracin_jax.kernels.token_vectors import token_vectors_batch


def brute_force_scores(a_ids, a_vecs, b_ids, b_vecs):
    """Python loops over pairs and shared slots, float64."""
    a_vecs = np.asarray(jnp.asarray(a_vecs, jnp.float32), np.float64)
    b_vecs = np.asarray(jnp.asarray(b_vecs, jnp.float32), np.float64)
    scores = np.zeros((len(a_ids), len(b_ids)))
    for m in range(len(a_ids)):
        for n in range(len(b_ids)):
            for t, wa in enumerate(a_ids[m]):
                for s, wb in enumerate(b_ids[n]):
                    if wa == wb != -1:
                        scores[m, n] += a_vecs[m, t] @ b_vecs[n, s]
    return scores


def random_block(rng, rows, slots, dim, vocab=8):
    """ids in [-1, vocab): -1 pads and repeated ids within a row."""
    ids = rng.integers(-1, vocab, (rows, slots)).astype(np.int32)
    vecs = rng.normal(size=(rows, slots, dim)).astype(np.float32)
    return ids, vecs


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("block_size", [None, 1, 3, 11, 100])
def test_dense_matches_brute_force(seed, block_size):
    rng = np.random.default_rng(seed)
    a = random_block(rng, 5, 7, 4)
    b = random_block(rng, 11, 6, 4)
    want = brute_force_scores(*a, *b)
    got = pair_scores_dense(*a, *b, block_size=block_size)
    assert got.shape == (5, 11) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    jitted = jax.jit(pair_scores_dense, static_argnames=("block_size",))(*a, *b, block_size=block_size)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(got), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_sparse_matches_brute_force_and_dense(seed):
    rng = np.random.default_rng(10 + seed)
    a = random_block(rng, 6, 5, 3, vocab=12)
    b = random_block(rng, 9, 8, 3, vocab=12)
    want = brute_force_scores(*a, *b)
    sparse = pair_scores_sparse(*a, *b)
    assert isinstance(sparse, np.ndarray) and sparse.dtype == np.float32
    np.testing.assert_allclose(sparse, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sparse, np.asarray(pair_scores_dense(*a, *b)), rtol=1e-5, atol=1e-5)


def test_sparse_with_a_prepared_side_reuses_it_across_blocks():
    """Retrieval prepares the test block once (index, float32 vectors, gathered rows) and
    joins it with every training shard: each shard's scores equal the brute force."""
    rng = np.random.default_rng(7)
    a_ids, a_vecs = random_block(rng, 40, 5, 3, vocab=6)  # frequent tokens: the GEMM path
    a_vecs = a_vecs.astype(np.float16)
    side = prepare_a_side(a_ids, a_vecs)
    for rows in (9, 30, 1):
        b = random_block(rng, rows, 4, 3, vocab=6)
        want = brute_force_scores(a_ids, a_vecs, *b)
        np.testing.assert_allclose(pair_scores_sparse(a_ids, a_vecs, *b, a_side=side), want, rtol=1e-4, atol=1e-4)
    assert side._rows  # gathered rows were kept for the next block
    with pytest.raises(ValueError, match="prepared for a block of shape"):
        pair_scores_sparse(a_ids[:3], a_vecs[:3], *b, a_side=side)


def test_scores_equal_dense_table_gradient_inner_products():
    """TracIn-WE = ⟨dℓ(a)/dE, dℓ(b)/dE⟩ with the table gradients built by scatter-add."""
    vocab, dim, length = 30, 6, 14
    rng = np.random.default_rng(7)

    def batch(rows):
        ids = rng.integers(0, vocab, (rows, length)).astype(np.int32)
        grads = rng.normal(size=(rows, length, dim)).astype(np.float32)
        mask = rng.random((rows, length)) > 0.25
        tables = np.zeros((rows, vocab, dim))
        for r in range(rows):
            np.add.at(tables[r], ids[r][mask[r]], grads[r][mask[r]])
        return token_vectors_batch(ids, grads, mask), tables

    (a_ids, a_vecs), a_tables = batch(4)
    (b_ids, b_vecs), b_tables = batch(9)
    want = np.einsum("mvd,nvd->mn", a_tables, b_tables)
    np.testing.assert_allclose(np.asarray(pair_scores_dense(a_ids, a_vecs, b_ids, b_vecs)),
                               want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pair_scores_sparse(a_ids, a_vecs, b_ids, b_vecs),
                               want, rtol=1e-4, atol=1e-4)


def test_no_shared_tokens_and_empty_rows_give_zero():
    rng = np.random.default_rng(1)
    a_ids = np.array([[0, 1, -1], [-1, -1, -1]], np.int32)
    b_ids = np.array([[2, 3, 4], [5, -1, -1], [-1, -1, -1]], np.int32)
    a_vecs = rng.normal(size=(2, 3, 4)).astype(np.float32)
    b_vecs = rng.normal(size=(3, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(pair_scores_dense(a_ids, a_vecs, b_ids, b_vecs)), 0.0)
    np.testing.assert_array_equal(pair_scores_sparse(a_ids, a_vecs, b_ids, b_vecs), 0.0)
    # -1 slots never match each other even though both sides hold -1.
    assert pair_scores_dense(a_ids, a_vecs, b_ids, b_vecs).shape == (2, 3)


def test_bfloat16_vectors_accumulate_in_float32():
    rng = np.random.default_rng(2)
    a_ids, a_vecs = random_block(rng, 3, 6, 16)
    b_ids, b_vecs = random_block(rng, 4, 6, 16)
    a_bf16, b_bf16 = jnp.asarray(a_vecs, jnp.bfloat16), jnp.asarray(b_vecs, jnp.bfloat16)
    got = pair_scores_dense(a_ids, a_bf16, b_ids, b_bf16)
    assert got.dtype == jnp.float32
    want = brute_force_scores(a_ids, a_bf16, b_ids, b_bf16)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_token_contributions_sum_to_pair_score(seed):
    rng = np.random.default_rng(20 + seed)
    ids = rng.integers(0, 50, (2, 40)).astype(np.int32)
    ids[1, :20] = ids[0, 5:25]  # guarantee overlap, with repeats merged by token_vectors
    grads = rng.normal(size=(2, 40, 8)).astype(np.float32)
    mask = np.ones((2, 40), bool)
    mask[:, -6:] = False
    uids, vecs = token_vectors_batch(ids, grads, mask)
    tokens, contributions = pair_token_contributions(uids[0], vecs[0], uids[1], vecs[1])
    tokens, contributions = np.asarray(tokens), np.asarray(contributions)
    assert tokens.shape == contributions.shape == (40,) and contributions.dtype == np.float32

    uid_np, vec_np = np.asarray(uids), np.asarray(vecs, np.float64)
    b_tokens = set(uid_np[1][uid_np[1] != -1].tolist())
    shared = [w for w in uid_np[0] if w != -1 and w in b_tokens]
    assert shared, "the test needs overlapping examples"
    used = tokens != -1
    np.testing.assert_array_equal(tokens[used], shared)  # a's slot order, padded with -1
    np.testing.assert_array_equal(tokens[~used], -1)
    np.testing.assert_array_equal(contributions[~used], 0.0)
    for w, c in zip(tokens[used], contributions[used]):
        ta, tb = list(uid_np[0]).index(w), list(uid_np[1]).index(w)
        np.testing.assert_allclose(c, vec_np[0, ta] @ vec_np[1, tb], rtol=1e-5, atol=1e-5)

    score = np.asarray(pair_scores_dense(uids[:1], vecs[:1], uids[1:], vecs[1:]))[0, 0]
    np.testing.assert_allclose(contributions.sum(dtype=np.float32), score, rtol=1e-5, atol=1e-5)
    jit_tokens, jit_contrib = pair_token_contributions_jit(uids[0], vecs[0], uids[1], vecs[1])
    np.testing.assert_array_equal(np.asarray(jit_tokens), tokens)
    np.testing.assert_allclose(np.asarray(jit_contrib), contributions, rtol=1e-6, atol=1e-6)


def test_token_contributions_without_overlap():
    a_ids = np.array([1, 2, -1], np.int32)
    b_ids = np.array([3, -1], np.int32)
    tokens, contributions = pair_token_contributions(
        a_ids, np.ones((3, 2), np.float32), b_ids, np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(np.asarray(tokens), -1)
    np.testing.assert_array_equal(np.asarray(contributions), 0.0)


def test_bad_inputs_raise():
    rng = np.random.default_rng(4)
    a = random_block(rng, 2, 3, 4)
    b_ids, b_vecs = random_block(rng, 2, 3, 5)
    with pytest.raises(ValueError, match="D=4.*D=5"):
        pair_scores_dense(*a, b_ids, b_vecs)
    with pytest.raises(ValueError, match="D=4.*D=5"):
        pair_scores_sparse(*a, b_ids, b_vecs)
    with pytest.raises(ValueError, match="b: expected"):
        pair_scores_dense(*a, b_ids[:, :2], b_vecs[..., :4])
    with pytest.raises(ValueError, match="block_size"):
        pair_scores_dense(*a, *a, block_size=0)
    with pytest.raises(ValueError, match="-3"):
        pair_scores_sparse(*a, np.full((2, 3), -3, np.int32), b_vecs[..., :4])


def test_dense_under_vmap_over_checkpoints():
    """Per-checkpoint scoring composes with vmap (leading checkpoint axis)."""
    rng = np.random.default_rng(5)
    blocks = [(random_block(rng, 3, 4, 2), random_block(rng, 5, 4, 2)) for _ in range(2)]
    stack = lambda i, j: np.stack([blk[i][j] for blk in blocks])  # noqa: E731
    batched = jax.vmap(pair_scores_dense)(stack(0, 0), stack(0, 1), stack(1, 0), stack(1, 1))
    for c, (a, b) in enumerate(blocks):
        np.testing.assert_allclose(np.asarray(batched[c]), brute_force_scores(*a, *b),
                                   rtol=1e-5, atol=1e-5)
