"""Fast paths of the gradient engine and pair kernels equal their plain versions."""
import jax
import numpy as np
import pytest

from tracin_jax.grads import make_single_device_gradient_fn
from tracin_jax.grads.embedding_grads import _token_vectors, default_micro_batch
from tracin_jax.kernels import token_vectors_batch
from tracin_jax.kernels.pair_scores import pair_scores_dense, pair_scores_sparse
from tracin_jax.models import BertClassifier, BertConfig, init_params

VOCAB, B, L = 50, 8, 12


def _setup():
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=40, num_labels=3)
    model = BertClassifier(cfg)
    params = init_params(model, jax.random.key(0), L)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, L + 1, size=B)
    ids = rng.integers(2, 12, size=(B, L)).astype(np.int32)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    batch = {"input_ids": np.where(mask == 1, ids, 0).astype(np.int32), "attention_mask": mask,
             "token_type_ids": np.zeros((B, L), np.int32),
             "labels": rng.integers(0, 3, size=B).astype(np.int32)}
    return model, params, batch


@pytest.mark.parametrize("mode", ["vmap", "sum"])
@pytest.mark.parametrize("k", [None, 3])
def test_micro_batches_equal_one_pass(mode, k):
    model, params, batch = _setup()
    whole = make_single_device_gradient_fn(model, k=k, mode=mode, micro_batch=B)(params, batch)
    for micro in (2,):
        split = make_single_device_gradient_fn(model, k=k, mode=mode, micro_batch=micro)(params, batch)
        for key in whole:
            np.testing.assert_allclose(np.asarray(split[key]), np.asarray(whole[key]),
                                       rtol=1e-5, atol=1e-7, err_msg=f"{key} micro={micro}")


def test_micro_batch_errors_and_default():
    model, params, batch = _setup()
    with pytest.raises(ValueError, match="does not divide"):
        make_single_device_gradient_fn(model, micro_batch=3)(params, batch)
    with pytest.raises(ValueError, match="positive int"):
        make_single_device_gradient_fn(model, micro_batch=0)
    assert default_micro_batch(32, 128, "cpu") == 4
    assert default_micro_batch(30, 128, "cpu") == 3
    assert default_micro_batch(32, 128, "gpu") == 32
    # narrower models take more tokens per micro-batch, wider ones keep ~512
    assert default_micro_batch(32, 64, "cpu", width=128) == 16
    assert default_micro_batch(32, 64, "cpu", width=64) == 32
    assert default_micro_batch(32, 64, "cpu", width=768) == 8


@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_on_kept_positions_equals_token_vectors(k):
    """Tied norms, pads in the middle and repeated ids: same ids, same vectors, same order."""
    rng = np.random.default_rng(k)
    ids = rng.integers(0, 4, (6, 9)).astype(np.int32)
    grads = rng.integers(-2, 3, (6, 9, 3)).astype(np.float32)  # integer entries: many ties
    mask = rng.random((6, 9)) < 0.7
    got = _token_vectors(ids, grads, mask, k, "position")
    want = token_vectors_batch(ids, grads, mask, k=k)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))


def _brute(a_ids, a_vecs, b_ids, b_vecs):
    out = np.zeros((len(a_ids), len(b_ids)))
    for m in range(len(a_ids)):
        for n in range(len(b_ids)):
            for t, wa in enumerate(a_ids[m]):
                for s, wb in enumerate(b_ids[n]):
                    if wa == wb != -1:
                        out[m, n] += np.float64(a_vecs[m, t]) @ np.float64(b_vecs[n, s])
    return out


def test_sparse_gemm_and_pairwise_tokens():
    """A token in every row (one GEMM, repeated within b's rows) plus rare ones (pairwise)."""
    rng = np.random.default_rng(8)
    a_ids = rng.integers(-1, 40, (6, 5)).astype(np.int32)
    b_ids = rng.integers(-1, 40, (30, 8)).astype(np.int32)
    a_ids[:, 0], b_ids[:, 0], b_ids[:, 1] = 99, 99, 99
    a_vecs = rng.normal(size=(6, 5, 3)).astype(np.float32)
    b_vecs = rng.normal(size=(30, 8, 3)).astype(np.float32)
    want = _brute(a_ids, a_vecs, b_ids, b_vecs)
    np.testing.assert_allclose(pair_scores_sparse(a_ids, a_vecs, b_ids, b_vecs), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(pair_scores_dense(a_ids, a_vecs, b_ids, b_vecs)), want,
                               rtol=1e-5, atol=1e-5)


def test_sparse_empty_blocks():
    ids, vecs = np.zeros((0, 4), np.int32), np.zeros((0, 4, 3), np.float32)
    other = (np.array([[1, -1, 2, 3]], np.int32), np.ones((1, 4, 3), np.float32))
    assert pair_scores_sparse(ids, vecs, *other).shape == (0, 1)
    assert pair_scores_sparse(*other, ids, vecs).shape == (1, 0)
