"""Per-example word-embedding gradients: the docs/method.md identities and sharded == single device."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tracin_jax import mesh as mesh_lib
from tracin_jax.grads import make_gradient_fn, make_single_device_gradient_fn, per_example_outputs
from tracin_jax.models import (BertClassifier, BertConfig, CNNClassifier, CNNConfig,
                               WORD_EMBEDDING_PATH, init_params)

VOCAB, B, L = 50, 8, 12


def _bert(kind="bert"):
    cfg = BertConfig(model_type=kind, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=40,
                     type_vocab_size=2 if kind == "bert" else 1, num_labels=3,
                     pad_token_id=0 if kind == "bert" else 1, hidden_dropout_prob=0.1,
                     attention_probs_dropout_prob=0.1)
    return BertClassifier(cfg)


def _cnn():
    return CNNClassifier(CNNConfig(vocab_size=VOCAB, embed_dim=16, filters=8, num_labels=3))


MODELS = {"bert": lambda: _bert("bert"), "roberta": lambda: _bert("roberta"), "cnn": _cnn}


def _batch(seed=0, pad_id=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, L + 1, size=B)
    lengths[0] = L
    ids = rng.integers(2, 12, size=(B, L)).astype(np.int32)  # small id range: many repeats
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, pad_id).astype(np.int32)
    tt = np.zeros((B, L), np.int32)
    labels = rng.integers(0, 3, size=B).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt, "labels": labels}


def _setup(name):
    model = MODELS[name]()
    params = init_params(model, jax.random.key(0), L)
    pad = 1 if name == "roberta" else 0
    return model, params, _batch(pad_id=pad)


def _dense_table_grad(model, params, batch, row):
    """d loss(x_row) / d E (the full [V, D] table gradient): eq. 3, docs/method.md."""
    def loss(table):
        p = jax.tree_util.tree_map(lambda x: x, params)
        node = p
        for key in WORD_EMBEDDING_PATH[:-1]:
            node = node[key]
        node[WORD_EMBEDDING_PATH[-1]] = table
        out = model.apply({"params": p}, batch["input_ids"][row:row + 1],
                          batch["attention_mask"][row:row + 1], batch["token_type_ids"][row:row + 1])
        return optax.softmax_cross_entropy_with_integer_labels(out.logits[0], batch["labels"][row])
    table = params
    for key in WORD_EMBEDDING_PATH:
        table = table[key]
    return np.asarray(jax.grad(loss)(table))


@pytest.mark.parametrize("name", ["bert", "roberta", "cnn"])
def test_segment_sum_equals_dense_table_gradient(name):
    model, params, batch = _setup(name)
    fn = make_single_device_gradient_fn(model, k=None)
    rec = jax.device_get(fn(params, batch))
    for row in (0, 3):
        dense = _dense_table_grad(model, params, batch, row)
        ids, vecs = rec["token_ids"][row], rec["vectors"][row]
        present = ids[ids >= 0]
        np.testing.assert_allclose(vecs[ids >= 0], dense[present], rtol=1e-4, atol=1e-6)
        others = np.setdiff1d(np.arange(VOCAB), present)
        assert np.abs(dense[others]).max() == 0.0  # pad id and absent tokens get nothing
        assert len(set(present.tolist())) == len(present)


@pytest.mark.parametrize("name", ["bert", "cnn"])
def test_vmap_grad_equals_grad_of_sum(name):
    model, params, batch = _setup(name)
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"])
    a = per_example_outputs(model, params, *args, mode="vmap")
    b = per_example_outputs(model, params, *args, mode="sum")
    np.testing.assert_allclose(a["position_grads"], b["position_grads"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert np.abs(np.asarray(a["position_grads"])[batch["attention_mask"] == 0]).max() == 0.0


def test_side_outputs_are_consistent():
    model, params, batch = _setup("bert")
    rec = jax.device_get(make_single_device_gradient_fn(model, k=None)(params, batch))
    out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                      batch["token_type_ids"])
    probs = jax.nn.softmax(out.logits)
    np.testing.assert_allclose(rec["features"], out.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec["p_minus_y"], probs - jax.nn.one_hot(batch["labels"], 3), atol=1e-6)
    np.testing.assert_array_equal(rec["prediction"], np.argmax(probs, -1))
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["labels"])
    np.testing.assert_allclose(rec["loss"], ce, rtol=1e-5)
    # position norms are ||g_i|| of the exact gradients, 0 at pads
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"])
    g = np.asarray(per_example_outputs(model, params, *args)["position_grads"])
    np.testing.assert_allclose(rec["position_norms"], np.linalg.norm(g, axis=-1), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("k", [None, 4])
def test_sharded_equals_single_device(k):
    assert jax.device_count() == 8
    model, params, batch = _setup("bert")
    batch = {key: np.concatenate([v, v[::-1]]) for key, v in batch.items()}  # 16 rows / 8 devices
    mesh = mesh_lib.make_mesh()
    sharded = make_gradient_fn(model, mesh, k=k)(mesh_lib.replicate(params, mesh),
                                                 mesh_lib.shard_batch(batch, mesh))
    single = make_single_device_gradient_fn(model, k=k)(params, batch)
    for key in single:
        np.testing.assert_allclose(np.asarray(sharded[key]), np.asarray(single[key]),
                                   rtol=1e-5, atol=1e-7, err_msg=key)


def test_topk_keeps_largest_positions():
    model, params, batch = _setup("bert")
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"])
    g = np.asarray(per_example_outputs(model, params, *args)["position_grads"])
    rec = jax.device_get(make_single_device_gradient_fn(model, k=3)(params, batch))
    row = 0
    norms = np.linalg.norm(g[row], axis=-1)
    keep = np.argsort(-norms, kind="stable")[:3]
    expect = {}
    for i in keep:
        w = int(batch["input_ids"][row, i])
        expect[w] = expect.get(w, 0) + g[row, i]
    got = {int(t): v for t, v in zip(rec["token_ids"][row], rec["vectors"][row]) if t >= 0}
    assert set(got) == set(expect)
    for w in expect:
        np.testing.assert_allclose(got[w], expect[w], rtol=1e-5, atol=1e-7)


def test_tracin_sign_convention_by_one_sgd_step():
    """docs/method.md "Sign convention": one SGD step of size eta on the embedding table with example x changes
    loss(x') by -eta * tracin_we(x, x') to first order (central finite difference)."""
    model, params, batch = _setup("bert")
    params = jax.tree_util.tree_map(lambda t: t, params)
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 30  # larger, measurable grads
    rec = jax.device_get(make_single_device_gradient_fn(model, k=None)(params, batch))

    def vectors(row):
        return {int(t): v for t, v in zip(rec["token_ids"][row], rec["vectors"][row]) if t >= 0}

    def loss_at(table, row):
        p = jax.tree_util.tree_map(lambda t: t, params)
        p["embeddings"]["word_embeddings"]["embedding"] = table
        out = model.apply({"params": p}, batch["input_ids"][row:row + 1],
                          batch["attention_mask"][row:row + 1], batch["token_type_ids"][row:row + 1])
        return optax.softmax_cross_entropy_with_integer_labels(out.logits[0], batch["labels"][row])

    table = params["embeddings"]["word_embeddings"]["embedding"]
    signs = set()
    for x, xp in [(0, 1), (0, 2)]:
        a, b = vectors(x), vectors(xp)
        score = sum(float(np.dot(a[w], b[w])) for w in set(a) & set(b))
        eta = 0.1
        g = jax.grad(loss_at)(table, x)
        delta = float(loss_at(table - eta * g, xp) - loss_at(table + eta * g, xp)) / 2
        np.testing.assert_allclose(delta, -eta * score, rtol=0.02)
        signs.add(np.sign(score))
    assert signs == {1.0, -1.0}  # both a proponent and an opponent pair were checked
