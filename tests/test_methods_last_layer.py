"""Last-layer and parameter-group methods against brute force on a tiny model.

tracin_last / tracin_layer[...] / tracin_all: gradients from jax.grad of the real
model; influence_last: a dense numpy Hessian (and jax.hessian for its formula);
representer: eq. 1 (docs/method.md "Methods") in numpy; tracin_tfidf: scikit-learn cosine similarity.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from methods_world import CHECKPOINTS, make_world
from tracin_jax import mesh as mesh_lib
from tracin_jax.grads.param_grads import ParamGradients, group_paths
from tracin_jax.methods import MethodError, get_method, score_matrix, self_influence
from tracin_jax.methods.tracin_last import classifier_hessian
from tracin_jax.models import parameter_groups

FINAL = CHECKPOINTS[-1][0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("last"), ks=(None,))


def _stores(world):
    return world.stores["test", None], world.stores["train", None]


def _loss_with_kernel(world, params, kernel, ids, mask, types, label):
    p = jax.tree_util.tree_map(lambda x: x, params)
    p["classifier"]["kernel"] = kernel
    out = world.model.apply({"params": p}, ids[None], mask[None], types[None])
    return optax.softmax_cross_entropy_with_integer_labels(out.logits[0], label)


def _inputs(enc):
    return enc.input_ids, enc.attention_mask, enc.token_type_ids, enc.labels


def _kernel_grads(world, data, step):
    """[N, H*C] ∂ℓ/∂W_classifier by jax.grad of the full model, one example at a time (vmap)."""
    params = world.params[step]
    grad = jax.vmap(jax.grad(lambda k, *x: _loss_with_kernel(world, params, k, *x)),
                    in_axes=(None, 0, 0, 0, 0))
    grads = grad(params["classifier"]["kernel"], *_inputs(data.encoded))
    return np.asarray(grads, np.float64).reshape(len(data.encoded), -1)


def _allclose(got, expected, rtol=2e-4):
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-6 * np.abs(expected).max())


def test_tracin_last_equals_classifier_gradient_products(world):
    expected = sum(lr * _kernel_grads(world, world.test, s) @ _kernel_grads(world, world.train, s).T
                   for s, lr in CHECKPOINTS)
    _allclose(score_matrix("tracin_last", *_stores(world)).scores, expected)
    assert (expected > 0).any() and (expected < 0).any()


def test_tracin_last_sign_by_one_sgd_step(world):
    """docs/method.md "Sign convention": a step W ← W − η ∂ℓ(x)/∂W changes ℓ(x') by −η · score_c to first order."""
    test, train = _stores(world)
    method = get_method("tracin_last").prepare(test, train)
    a, b = test.load(FINAL), train.load(FINAL)
    a["position"], b["position"] = np.arange(test.num_examples), np.arange(train.num_examples)
    scores = method.score_block(a, b, FINAL)
    params = world.params[FINAL]
    kernel = np.asarray(params["classifier"]["kernel"], np.float64)
    grads = _kernel_grads(world, world.train, FINAL).reshape((-1,) + kernel.shape)
    enc = world.test.encoded
    pairs = [np.unravel_index(np.argmax(scores), scores.shape),
             np.unravel_index(np.argmin(scores), scores.shape), (1, 3), (4, 11)]
    signs = set()
    for m, n in pairs:
        eta = 1e-3
        loss = lambda k: float(_loss_with_kernel(world, params, k, *(x[m] for x in _inputs(enc))))
        delta = (loss(kernel - eta * grads[n]) - loss(kernel + eta * grads[n])) / 2
        np.testing.assert_allclose(delta, -eta * scores[m, n], rtol=0.02)
        signs.add(float(np.sign(scores[m, n])))
    assert signs == {1.0, -1.0}


def test_tracin_layer_classifier_kernel_only_equals_tracin_last(world):
    test, train = _stores(world)
    layer = score_matrix("tracin_layer[classifier]", test, train, context=world.context).scores
    _allclose(layer, score_matrix("tracin_last", test, train).scores)
    # With the bias: ∂ℓ/∂b = p − y, so the extra term is Σ_c η_c ⟨p−y, p'−y'⟩.
    with_bias = score_matrix(get_method("tracin_layer[classifier]", include_bias=True), test, train,
                             context=world.context).scores
    bias_term = sum(lr * test.load(s)["p_minus_y"] @ train.load(s)["p_minus_y"].T for s, lr in CHECKPOINTS)
    _allclose(with_bias - layer, bias_term)
    # The "+bias" name (used in sweeps, paper sec. 3.2) is the same method under its own name.
    named = get_method("tracin_layer[classifier]+bias")
    assert named.name == "tracin_layer[classifier]+bias" and named.include_bias
    _allclose(score_matrix(named, test, train, context=world.context).scores, with_bias)
    assert get_method("tracin_all+bias").name == "tracin_all+bias"
    for bad in ("tracin_last+bias", "tracin_we+bias"):
        with pytest.raises(ValueError, match="tracin_all and tracin_layer"):
            get_method(bad)
    with pytest.raises(ValueError, match="already includes"):
        get_method("tracin_all+bias", include_bias=True)


def test_tracin_layer_word_embedding_equals_tracin_we(world):
    test, train = _stores(world)
    layer = score_matrix("tracin_layer[word_embedding]", test, train, context=world.context).scores
    _allclose(layer, score_matrix("tracin_we", test, train).scores)


def _all_grads(world, data, step):
    """{path: [N, ...]} per-example gradients of every parameter (vmap of jax.grad)."""
    from flax import traverse_util
    params = world.params[step]

    def loss(p, ids, mask, types, label):
        out = world.model.apply({"params": p}, ids[None], mask[None], types[None])
        return optax.softmax_cross_entropy_with_integer_labels(out.logits[0], label)

    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0, 0))(params, *_inputs(data.encoded))
    return {k: np.asarray(v, np.float64).reshape(len(data.encoded), -1)
            for k, v in traverse_util.flatten_dict(grads).items()}


def _group_brute_force(world, paths):
    total = 0.0
    for step, lr in CHECKPOINTS:
        a, b = _all_grads(world, world.test, step), _all_grads(world, world.train, step)
        total = total + lr * sum(a[p] @ b[p].T for p in paths)
    return total


def test_tracin_all_and_groups_match_full_gradient_brute_force(world):
    test, train = _stores(world)
    groups = parameter_groups(world.params[FINAL])
    assert list(groups)[:2] == ["word_embedding", "embeddings"] and list(groups)[-1] == "classifier"
    weights = [p for g in groups.values() for p in g if p[-1] != "bias"]
    assert len(weights) < sum(len(g) for g in groups.values())  # biases exist and are excluded
    _allclose(score_matrix("tracin_all", test, train, context=world.context).scores,
              _group_brute_force(world, weights), rtol=1e-3)
    two = [p for g in ("layer_0", "pooler") for p in groups[g] if p[-1] != "bias"]
    _allclose(score_matrix("tracin_layer[layer_0,pooler]", test, train, context=world.context).scores,
              _group_brute_force(world, two), rtol=1e-3)
    with pytest.raises(MethodError, match="unknown parameter groups"):
        score_matrix("tracin_layer[layer_7]", test, train, context=world.context)
    with pytest.raises(MethodError, match="RunContext"):
        score_matrix("tracin_all", test, train)


def test_param_grads_sharded_equals_single_device(world):
    params = world.params[FINAL]
    paths = group_paths(params, ["layer_0"])
    assert not any(p[-1] == "bias" for p in paths)
    enc, rows = world.train.encoded, np.arange(len(world.train.encoded))[::-1][:13]
    single = ParamGradients(world.model, paths, mesh=mesh_lib.make_mesh(1), chunk_size=4)
    sharded = ParamGradients(world.model, paths, mesh=mesh_lib.make_mesh(8))
    assert len(sharded.mesh.devices.ravel()) == 8
    g1, g8 = single.grads(params, enc, rows), sharded.grads(params, enc, rows)
    np.testing.assert_allclose(g8, g1, rtol=1e-5, atol=1e-7)
    test_grads = g1[:3]
    np.testing.assert_allclose(sharded.scores(params, test_grads, enc, rows), test_grads @ g1.T,
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(sharded.squared_norms(params, enc, rows), (g1 ** 2).sum(1), rtol=1e-4)


def _features(store, step):
    data = store.load(step)
    return data["features"].astype(np.float64), data["p_minus_y"].astype(np.float64), data["label"]


def test_influence_last_matches_dense_inverse_hessian(world):
    test, train = _stores(world)
    damping = 0.05
    got = score_matrix(get_method("influence_last", damping=damping), test, train).scores
    a_tr, pmy_tr, y_tr = _features(train, FINAL)
    a_te, pmy_te, _ = _features(test, FINAL)
    g_tr = np.stack([np.outer(a, p).ravel() for a, p in zip(a_tr, pmy_tr)])
    g_te = np.stack([np.outer(a, p).ravel() for a, p in zip(a_te, pmy_te)])
    probs = pmy_tr + np.eye(pmy_tr.shape[1])[y_tr]
    hessian = np.mean([np.kron(np.outer(a, a), np.diag(p) - np.outer(p, p))
                       for a, p in zip(a_tr, probs)], axis=0)
    expected = g_te @ np.linalg.solve(hessian + damping * np.eye(len(hessian)), g_tr.T)
    _allclose(got, expected, rtol=1e-3)
    assert (expected > 0).any() and (expected < 0).any()


def test_classifier_hessian_equals_jax_hessian_of_the_linear_head(world):
    _, train = _stores(world)
    a, _, y = _features(train, FINAL)
    bias = np.asarray(world.params[FINAL]["classifier"]["bias"], np.float64)
    kernel = np.asarray(world.params[FINAL]["classifier"]["kernel"], np.float64)

    def mean_loss(w):
        logits = jnp.asarray(a, jnp.float32) @ w.reshape(kernel.shape) + bias.astype(np.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

    expected = np.asarray(jax.hessian(mean_loss)(jnp.asarray(kernel.ravel(), jnp.float32)))
    np.testing.assert_allclose(classifier_hessian(train, FINAL), expected, rtol=2e-3, atol=1e-5)


def test_influence_last_sign_agrees_with_tracin_at_large_damping(world):
    """(H + λI)⁻¹ → I/λ: λ·influence_last tends to the final-checkpoint TracIn-last kernel."""
    test, train = _stores(world)
    damping = 1e6
    got = damping * score_matrix(get_method("influence_last", damping=damping), test, train).scores
    a_te, pmy_te, _ = _features(test, FINAL)
    a_tr, pmy_tr, _ = _features(train, FINAL)
    _allclose(got, (a_te @ a_tr.T) * (pmy_te @ pmy_tr.T), rtol=1e-3)


def test_representer_formula_and_sign(world):
    test, train = _stores(world)
    l2 = 0.01
    got = score_matrix(get_method("representer", l2=l2), test, train).scores
    a_tr, pmy_tr, _ = _features(train, FINAL)
    a_te, _, y_te = _features(test, FINAL)
    alpha = -pmy_tr / (2 * l2 * len(a_tr))  # [N, C]
    expected = alpha[:, y_te].T * (a_te @ a_tr.T)
    _allclose(got, expected)
    ids, self_scores = self_influence(get_method("representer", l2=l2), train)
    assert (self_scores > 0).all()  # (p_y − 1) ≤ 0: every example supports itself
    with pytest.raises(ValueError, match="l2 must be > 0"):
        get_method("representer", l2=0)


def test_tracin_tfidf_matches_sklearn(world):
    test, train = _stores(world)
    got = score_matrix("tracin_tfidf", test, train, context=world.context).scores
    vectorizer = TfidfVectorizer().fit(world.train.texts.texts)
    cos = cosine_similarity(vectorizer.transform(world.test.texts.texts),
                            vectorizer.transform(world.train.texts.texts))
    agreement = sum(lr * test.load(s)["p_minus_y"].astype(np.float64)
                    @ train.load(s)["p_minus_y"].T for s, lr in CHECKPOINTS)
    _allclose(got, cos * agreement)
    with pytest.raises(MethodError, match="RunContext"):
        score_matrix("tracin_tfidf", test, train)


@pytest.mark.parametrize("name", ["tracin_last", "influence_last", "representer", "tracin_tfidf",
                                  "tracin_layer[layer_0]"])
def test_self_influence_is_the_diagonal(world, name):
    _, train = _stores(world)
    ids, scores = self_influence(name, train, context=world.context)
    full = score_matrix(name, train, train, context=world.context).scores
    np.testing.assert_array_equal(ids, world.train.texts.ids)
    np.testing.assert_allclose(scores, np.diag(full), rtol=1e-4, atol=1e-6 * np.abs(full).max())
