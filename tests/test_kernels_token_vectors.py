"""Tests for tracin_jax.kernels.token_vectors against a NumPy reference and the
dense embedding-table gradient (docs/method.md, eq. 3 / eq. 5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracin_jax.kernels.token_vectors import (
    TOPK_BY,
    position_norms,
    token_vectors,
    token_vectors_batch,
    validate_token_ids,
)


def reference_token_vectors(ids, grads, mask, k=None, topk_by="position"):
    """Loop-based reference in float64 (slot order: first kept position)."""
    ids = np.asarray(ids)
    grads = np.asarray(jnp.asarray(grads, jnp.float32), np.float64)
    mask = np.asarray(mask, bool)
    length, dim = grads.shape
    real = [i for i in range(length) if mask[i]]
    norms = np.linalg.norm(grads, axis=1)
    if k is not None and topk_by == "position":
        real = sorted(sorted(real, key=lambda i: (-norms[i], i))[:k])
    merged, first_pos = {}, {}
    for i in real:
        merged[ids[i]] = merged.get(ids[i], np.zeros(dim)) + grads[i]
        first_pos.setdefault(ids[i], i)
    tokens = sorted(merged, key=lambda w: first_pos[w])
    if k is not None and topk_by == "token":
        best = sorted(tokens, key=lambda w: (-np.linalg.norm(merged[w]), first_pos[w]))[:k]
        tokens = sorted(best, key=lambda w: first_pos[w])
    slots = length if k is None else min(k, length)
    out_ids = np.full(slots, -1, np.int32)
    out_vecs = np.zeros((slots, dim))
    for slot, w in enumerate(tokens):
        out_ids[slot] = w
        out_vecs[slot] = merged[w]
    return out_ids, out_vecs


def random_example(seed, length=12, dim=5, vocab=6, pad_frac=0.3, dtype=np.float32):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, length).astype(np.int32)  # small vocab: many repeats
    grads = rng.normal(size=(length, dim)).astype(dtype)
    mask = rng.random(length) > pad_frac
    return ids, grads, mask


def assert_matches_reference(ids, grads, mask, k, topk_by, rtol=1e-5, atol=1e-6):
    got_ids, got_vecs = token_vectors(ids, grads, mask, k, topk_by=topk_by)
    want_ids, want_vecs = reference_token_vectors(ids, grads, mask, k, topk_by)
    assert got_ids.dtype == jnp.int32 and got_vecs.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got_ids), want_ids)
    np.testing.assert_allclose(np.asarray(got_vecs), want_vecs, rtol=rtol, atol=atol)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [None, 1, 3, 7, 12, 20])
@pytest.mark.parametrize("topk_by", ["position", "token"])
def test_matches_numpy_reference(seed, k, topk_by):
    ids, grads, mask = random_example(seed)
    assert_matches_reference(ids, grads, mask, k, topk_by)


def test_output_shapes_and_padding():
    ids, grads, mask = random_example(0, length=12, dim=5)
    for k, slots in [(None, 12), (4, 4), (30, 12)]:
        out_ids, vecs = token_vectors(ids, grads, mask, k)
        assert out_ids.shape == (slots,) and vecs.shape == (slots, 5)
        unused = np.asarray(out_ids) == -1
        np.testing.assert_array_equal(np.asarray(vecs)[unused], 0.0)
        used_ids = np.asarray(out_ids)[~unused]
        assert len(set(used_ids.tolist())) == used_ids.size  # each token once
        assert not unused[: used_ids.size].any()  # used slots come first


def test_all_pad_row():
    ids, grads, _ = random_example(1)
    mask = np.zeros(len(ids), bool)
    for k in (None, 3):
        for topk_by in TOPK_BY:
            out_ids, vecs = token_vectors(ids, grads, mask, k, topk_by=topk_by)
            np.testing.assert_array_equal(np.asarray(out_ids), -1)
            np.testing.assert_array_equal(np.asarray(vecs), 0.0)


@pytest.mark.parametrize("topk_by", ["position", "token"])
def test_k_at_least_length_equals_exact(topk_by):
    ids, grads, mask = random_example(2)
    exact = token_vectors(ids, grads, mask)
    for k in (len(ids), len(ids) + 5):
        approx = token_vectors(ids, grads, mask, k, topk_by=topk_by)
        np.testing.assert_array_equal(np.asarray(approx[0]), np.asarray(exact[0]))
        np.testing.assert_allclose(np.asarray(approx[1]), np.asarray(exact[1]), rtol=1e-6)


def test_pad_positions_never_contribute():
    ids, grads, mask = random_example(3)
    poisoned = grads.copy()
    poisoned[~mask] = 1e6  # huge pad gradients must neither be kept nor summed
    for k in (None, 2):
        a = token_vectors(ids, grads, mask, k)
        b = token_vectors(ids, poisoned, mask, k)
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_norm_ties_keep_lower_position():
    # Positions 1, 3 and 4 share the largest norm exactly (same vector up to sign).
    grads = np.full((6, 3), 0.1, np.float32)
    v = np.array([3.0, -1.0, 2.0], np.float32)
    grads[1], grads[3], grads[4] = v, -v, v
    ids = np.array([10, 11, 12, 13, 14, 15], np.int32)
    mask = np.ones(6, bool)
    out_ids, vecs = token_vectors(ids, grads, mask, k=2)
    np.testing.assert_array_equal(np.asarray(out_ids), [11, 13])
    np.testing.assert_array_equal(np.asarray(vecs), np.stack([v, -v]))
    # A pad position with the same norm does not take part in the tie.
    mask[1] = False
    out_ids, _ = token_vectors(ids, grads, mask, k=2)
    np.testing.assert_array_equal(np.asarray(out_ids), [13, 14])


def test_token_ties_keep_lower_first_position():
    v = np.array([1.0, 2.0], np.float32)
    grads = np.stack([0.1 * v, v, -v, 0.2 * v, v]).astype(np.float32)
    ids = np.array([5, 9, 7, 5, 8], np.int32)  # tokens 9, 7, 8 tie on ‖G_w‖
    out_ids, _ = token_vectors(ids, grads, np.ones(5, bool), k=2, topk_by="token")
    np.testing.assert_array_equal(np.asarray(out_ids), [9, 7])


def test_token_mode_does_not_split_repeated_words():
    grads = np.array([[4.0, 0.0], [0.5, 0.0], [3.0, 0.0]], np.float32)
    ids = np.array([7, 7, 8], np.int32)
    mask = np.ones(3, bool)
    pos_ids, pos_vecs = token_vectors(ids, grads, mask, k=2, topk_by="position")
    np.testing.assert_array_equal(np.asarray(pos_ids), [7, 8])
    np.testing.assert_allclose(np.asarray(pos_vecs), [[4.0, 0.0], [3.0, 0.0]])  # pos 1 dropped
    tok_ids, tok_vecs = token_vectors(ids, grads, mask, k=1, topk_by="token")
    np.testing.assert_array_equal(np.asarray(tok_ids), [7])
    np.testing.assert_allclose(np.asarray(tok_vecs), [[4.5, 0.0]])


@pytest.mark.parametrize("k", [None, 4])
def test_bfloat16_input_accumulates_in_float32(k):
    ids, grads, mask = random_example(4, length=16, dim=6)
    grads_bf16 = jnp.asarray(grads, jnp.bfloat16)
    out_ids, vecs = token_vectors(ids, grads_bf16, mask, k)
    assert vecs.dtype == jnp.float32
    want_ids, want_vecs = reference_token_vectors(ids, grads_bf16, mask, k)
    np.testing.assert_array_equal(np.asarray(out_ids), want_ids)
    np.testing.assert_allclose(np.asarray(vecs), want_vecs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k,topk_by", [(None, "position"), (3, "position"), (3, "token")])
def test_jit_and_vmap_equal_eager(k, topk_by):
    batch = [random_example(seed, length=10) for seed in range(5)]
    ids, grads, mask = (np.stack(x) for x in zip(*batch))
    mask[2] = False  # one all-pad row
    jitted = jax.jit(token_vectors, static_argnames=("k", "topk_by"))
    batch_ids, batch_vecs = token_vectors_batch(ids, grads, mask, k, topk_by=topk_by)
    for b in range(len(batch)):
        eager_ids, eager_vecs = token_vectors(ids[b], grads[b], mask[b], k, topk_by=topk_by)
        jit_ids, jit_vecs = jitted(ids[b], grads[b], mask[b], k=k, topk_by=topk_by)
        np.testing.assert_array_equal(np.asarray(jit_ids), np.asarray(eager_ids))
        np.testing.assert_array_equal(np.asarray(batch_ids[b]), np.asarray(eager_ids))
        np.testing.assert_allclose(np.asarray(jit_vecs), np.asarray(eager_vecs), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(batch_vecs[b]), np.asarray(eager_vecs), rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_exact_vectors_equal_dense_table_gradient(seed):
    """docs/method.md, eq. 3: G_w = row w of dℓ/dE; rows of absent tokens are zero."""
    vocab, dim, length, pad_id = 50, 8, 20, 0
    rng = np.random.default_rng(seed)
    table = jnp.asarray(rng.normal(size=(vocab, dim)), jnp.float32)
    ids = rng.integers(1, 12, length).astype(np.int32)  # repeats; pad id unused at real positions
    mask = np.ones(length, bool)
    mask[-5:] = False
    ids[-5:] = pad_id
    w = jnp.asarray(rng.normal(size=dim), jnp.float32)
    u = jnp.asarray(rng.normal(size=dim), jnp.float32)
    coef = jnp.asarray(rng.normal(size=length), jnp.float32) * mask

    def loss_of_embeddings(emb):  # [L, D]; position-dependent and with cross-position terms
        pooled = jnp.sum(emb * jnp.asarray(mask, jnp.float32)[:, None], axis=0)
        return jnp.sum(coef * jnp.tanh(emb @ w)) + 0.1 * jnp.dot(pooled, u) ** 2

    dense = np.asarray(jax.grad(lambda e: loss_of_embeddings(e[ids]))(table))
    position_grads = jax.grad(loss_of_embeddings)(table[ids])
    out_ids, vecs = token_vectors(ids, position_grads, mask)
    out_ids, vecs = np.asarray(out_ids), np.asarray(vecs)
    used = out_ids != -1
    assert set(out_ids[used].tolist()) == set(ids[mask].tolist())
    np.testing.assert_allclose(vecs[used], dense[out_ids[used]], rtol=1e-5, atol=1e-6)
    absent = np.setdiff1d(np.arange(vocab), out_ids[used])
    np.testing.assert_array_equal(dense[absent], 0.0)


def test_position_norms():
    ids, grads, mask = random_example(5)
    norms = np.asarray(position_norms(grads, mask))
    np.testing.assert_allclose(norms, np.where(mask, np.linalg.norm(grads, axis=1), 0.0), rtol=1e-6)
    batched = np.asarray(position_norms(np.stack([grads, grads]), np.stack([mask, ~mask])))
    np.testing.assert_allclose(batched[0], norms)
    np.testing.assert_array_equal(batched[1][mask], 0.0)


def test_bad_inputs_raise():
    ids, grads, mask = random_example(6)
    for bad_k in (0, -2, True, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            token_vectors(ids, grads, mask, bad_k)
    with pytest.raises(ValueError, match="topk_by"):
        token_vectors(ids, grads, mask, 3, topk_by="word")
    with pytest.raises(ValueError, match="shapes disagree"):
        token_vectors(ids[:-1], grads, mask)
    with pytest.raises(ValueError, match=r"\[L, D\]"):
        token_vectors(ids, grads[:, 0], mask)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        token_vectors_batch(ids, grads, mask)


def test_validate_token_ids():
    ids = np.array([[3, 99, 0], [100, 5, -1]])
    mask = np.array([[True, True, True], [False, True, False]])
    validate_token_ids(ids, mask, vocab_size=100)  # out-of-range ids only at pads
    with pytest.raises(ValueError, match=r"2 token ids.*\[-1, 100\]"):
        validate_token_ids(ids, np.ones_like(mask), vocab_size=100)
    with pytest.raises(ValueError, match="99"):
        validate_token_ids(ids, mask, vocab_size=99)
