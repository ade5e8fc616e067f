"""TracIn-WE family on real stores of a tiny model, against brute-force definitions.

Brute force = eq. 3/4 (docs/method.md): the dot product of full embedding-table gradients
``∂ℓ(x)/∂E`` (computed with jax.grad w.r.t. the [V, D] table), summed over
checkpoints with their learning rates.
"""
import itertools

import jax
import numpy as np
import optax
import pytest

from methods_world import CHECKPOINTS, make_world
from tracin_jax.grads import per_example_outputs
from tracin_jax.methods import MethodError, get_method, score_matrix, self_influence
from tracin_jax.methods.explain import explain_pair
from tracin_jax.methods.tracin_we import document_frequency
from tracin_jax.models import get_word_embedding_table

K = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("we"), ks=(None, K))


def _table_grads(world, data, step, k=None):
    """[N, V, D] ∂ℓ(x)/∂E per example; with k, only the top-k positions by ‖g_i‖ (eq. 5)."""
    model, params, enc = world.model, world.params[step], data.encoded
    if k is None:
        table = get_word_embedding_table(params)

        def loss(tab, ids, mask, types, label):
            p = jax.tree_util.tree_map(lambda x: x, params)
            p["embeddings"]["word_embeddings"]["embedding"] = tab
            out = model.apply({"params": p}, ids[None], mask[None], types[None])
            return optax.softmax_cross_entropy_with_integer_labels(out.logits[0], label)

        return np.asarray(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0, 0))(
            table, enc.input_ids, enc.attention_mask, enc.token_type_ids, enc.labels), np.float64)
    out = per_example_outputs(model, params, enc.input_ids, enc.attention_mask, enc.token_type_ids,
                              enc.labels)
    grads = np.asarray(out["position_grads"], np.float64)
    vocab = world.tokenizer.vocab_size
    dense = np.zeros((len(grads), vocab, grads.shape[-1]))
    for n in range(len(grads)):
        norms = np.linalg.norm(grads[n], axis=1)
        real = np.flatnonzero(enc.attention_mask[n])
        keep = real[np.lexsort((real, -norms[real]))][:k]  # largest norm, ties by position
        for i in keep:
            dense[n, enc.input_ids[n, i]] += grads[n, i]
    return dense


def _brute_force(world, k=None, vocab_mask=None):
    total = 0.0
    for step, lr in CHECKPOINTS:
        a, b = _table_grads(world, world.test, step, k), _table_grads(world, world.train, step, k)
        if vocab_mask is not None:
            a, b = a * vocab_mask[None, :, None], b * vocab_mask[None, :, None]
        total = total + lr * np.einsum("mvd,nvd->mn", a, b)
    return total


def _stores(world, k):
    return world.stores["test", k], world.stores["train", k]


def test_tracin_we_equals_dot_product_of_table_gradients(world):
    got = score_matrix("tracin_we", *_stores(world, None))
    expected = _brute_force(world)
    np.testing.assert_allclose(got.scores, expected, rtol=2e-4, atol=1e-6 * np.abs(expected).max())
    assert (expected > 0).any() and (expected < 0).any()  # both proponents and opponents occur
    np.testing.assert_array_equal(got.train_ids, world.train.texts.ids)
    np.testing.assert_array_equal(got.test_ids, world.test.texts.ids)


def test_tracin_we_topk_equals_topk_definition(world):
    got = score_matrix(get_method("tracin_we_topk", k=K), *_stores(world, K))
    expected = _brute_force(world, k=K)
    np.testing.assert_allclose(got.scores, expected, rtol=2e-4, atol=1e-6 * np.abs(expected).max())
    exact = score_matrix("tracin_we", *_stores(world, None)).scores
    assert not np.allclose(got.scores, exact)  # the top-k store really is an approximation


def test_store_k_must_match_the_method(world):
    with pytest.raises(MethodError, match=f"k={K}"):
        score_matrix("tracin_we", *_stores(world, K))
    with pytest.raises(MethodError, match=f"has k={K}"):
        score_matrix("tracin_we_topk", *_stores(world, K))  # default k=10
    with pytest.raises(MethodError, match="k=None"):
        score_matrix(get_method("tracin_we_topk", k=K), *_stores(world, None))
    with pytest.raises(ValueError, match="positive int"):
        get_method("tracin_we_topk", k=0)


def _vocab_mask(world, ids, keep):
    mask = np.zeros(world.tokenizer.vocab_size) if keep else np.ones(world.tokenizer.vocab_size)
    mask[list(ids)] = 1.0 if keep else 0.0
    return mask


def test_noc_drops_special_and_frequent_tokens(world):
    test, train = _stores(world, None)
    method = get_method("tracin_we_noc", df_threshold=0.3).prepare(test, train, world.context)
    got = score_matrix(method, test, train, context=world.context)
    enc = world.train.encoded
    df = np.array([np.mean([(row[mask > 0] == t).any() for row, mask in
                            zip(enc.input_ids, enc.attention_mask)]) for t in range(world.tokenizer.vocab_size)])
    common = set(np.flatnonzero(df > 0.3).tolist()) | {world.tokenizer.cls_id, world.tokenizer.sep_id}
    assert set(method.describe()["common_tokens"]) == common
    assert len(common) > 2  # some words, not only [CLS]/[SEP]
    np.testing.assert_allclose(document_frequency(train)[:len(df)], df)
    expected = _brute_force(world, vocab_mask=_vocab_mask(world, common, keep=False))
    np.testing.assert_allclose(got.scores, expected, rtol=2e-4, atol=1e-6 * np.abs(expected).max())

    explicit = get_method("tracin_we_noc", common_tokens=[5, 6])
    got = score_matrix(explicit, test, train, context=world.context).scores
    drop = {5, 6, world.tokenizer.cls_id, world.tokenizer.sep_id}
    expected = _brute_force(world, vocab_mask=_vocab_mask(world, drop, keep=False))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6 * np.abs(expected).max())


def test_tracin_common_keeps_only_start_and_end_tokens(world):
    test, train = _stores(world, None)
    got = score_matrix("tracin_common", test, train, context=world.context).scores
    specials = {world.tokenizer.cls_id, world.tokenizer.sep_id}
    expected = _brute_force(world, vocab_mask=_vocab_mask(world, specials, keep=True))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6 * np.abs(expected).max())
    with pytest.raises(MethodError, match="start/end token ids"):
        score_matrix("tracin_common", test, train)
    # tracin_we = tracin_common + tracin_we without the special tokens
    noc = score_matrix(get_method("tracin_we_noc", common_tokens=[]), test, train,
                       context=world.context).scores
    np.testing.assert_allclose(got + noc, score_matrix("tracin_we", test, train).scores,
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name,k,options", [("tracin_we", None, {}), ("tracin_we_topk", K, {"k": K}),
                                            ("tracin_we_noc", None, {"df_threshold": 0.5}),
                                            ("tracin_common", None, {})])
def test_token_contributions_sum_to_the_score(world, name, k, options):
    test, train = _stores(world, k)
    matrix = score_matrix(name, test, train, context=world.context, options=options).scores
    enc_test, enc_train = world.test.encoded, world.train.encoded
    checked = 0
    for m, n in [(0, 0), (1, 5), (2, 17), (3, 33), (5, 39)]:
        e = explain_pair(name, test, int(world.test.texts.ids[m]), train,
                         int(world.train.texts.ids[n]), context=world.context, options=options)
        total = sum(t.contribution for t in e.tokens)
        np.testing.assert_allclose(total, e.score, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(e.score, matrix[m, n], rtol=1e-5, atol=1e-9)
        shared = set(enc_test.input_ids[m][enc_test.attention_mask[m] > 0]) & \
            set(enc_train.input_ids[n][enc_train.attention_mask[n] > 0])
        assert {t.token_id for t in e.tokens} <= shared
        assert [t.token for t in e.tokens] == world.tokenizer.convert_ids_to_tokens(
            [t.token_id for t in e.tokens])
        values = [t.contribution for t in e.tokens]
        assert values == sorted(values, reverse=True)
        checked += bool(e.tokens)
    assert checked >= 3


def test_self_influence_is_the_diagonal(world):
    _, train = _stores(world, None)
    ids, scores = self_influence("tracin_we", train)
    full = score_matrix("tracin_we", train, train).scores
    np.testing.assert_array_equal(ids, world.train.texts.ids)
    np.testing.assert_allclose(scores, np.diag(full), rtol=1e-5)
    assert (scores > 0).all()


def _syn_brute_force(world, threshold, m, n):
    """Appendix H by enumeration: best permutation of the k slots, maximising Σ|WGS|."""
    test, train = _stores(world, K)
    total = 0.0
    for step, lr in CHECKPOINTS:
        a, b = test.load(step), train.load(step)
        table = np.asarray(get_word_embedding_table(world.params[step]), np.float64)
        unit = table / np.linalg.norm(table, axis=1, keepdims=True)
        wgs = np.zeros((K, K))
        for t, s in itertools.product(range(K), range(K)):
            i, j = a["token_ids"][m, t], b["token_ids"][n, s]
            if i >= 0 and j >= 0 and unit[i] @ unit[j] >= threshold:
                wgs[t, s] = np.dot(a["vectors"][m, t].astype(np.float64), b["vectors"][n, s])
        best = max(itertools.permutations(range(K)), key=lambda p: sum(abs(wgs[t, p[t]]) for t in range(K)))
        total += lr * sum(wgs[t, best[t]] for t in range(K))
    return total


def test_tracin_we_syn_matches_assignment_brute_force(world):
    test, train = _stores(world, K)
    threshold = 0.2  # low: many synonym pairs, so the assignment matters
    got = score_matrix(get_method("tracin_we_syn", threshold=threshold), test, train,
                       context=world.context).scores
    for m, n in [(0, 1), (1, 4), (2, 9), (4, 20), (5, 31)]:
        np.testing.assert_allclose(got[m, n], _syn_brute_force(world, threshold, m, n), rtol=1e-4,
                                   atol=1e-9)
    topk = score_matrix(get_method("tracin_we_topk", k=K), test, train).scores
    assert not np.allclose(got, topk)


def test_tracin_we_syn_without_synonyms_is_tracin_we_topk(world):
    test, train = _stores(world, K)
    for step, _ in CHECKPOINTS:  # no two distinct words are that close
        table = np.asarray(get_word_embedding_table(world.params[step]), np.float64)
        unit = table / np.linalg.norm(table, axis=1, keepdims=True)
        assert (unit @ unit.T - 2 * np.eye(len(unit))).max() < 0.999
    got = score_matrix(get_method("tracin_we_syn", threshold=0.999), test, train,
                       context=world.context).scores
    topk = score_matrix(get_method("tracin_we_topk", k=K), test, train).scores
    np.testing.assert_allclose(got, topk, rtol=1e-4, atol=1e-7 * np.abs(topk).max())


def test_tracin_we_syn_needs_topk_stores_and_the_run(world):
    with pytest.raises(MethodError, match="same k"):
        score_matrix("tracin_we_syn", *_stores(world, None), context=world.context)
    with pytest.raises(MethodError, match="RunContext"):
        score_matrix("tracin_we_syn", *_stores(world, K))
