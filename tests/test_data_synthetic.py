"""The synthetic corpus: determinism and the planted structure its ground truth describes."""
import json

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from tracin_jax.data import default_data_config, default_synthetic_config, load_splits, make_synthetic


@pytest.fixture(scope="module")
def corpus():
    return make_synthetic(default_synthetic_config())


def _words(text):
    return text.split()


def test_deterministic_for_a_seed_and_different_across_seeds():
    cfg = default_synthetic_config()
    cfg.num_train, cfg.num_eval = 400, 100
    a, b = make_synthetic(cfg), make_synthetic(cfg)
    assert a.train.fingerprint() == b.train.fingerprint()
    assert a.eval.fingerprint() == b.eval.fingerprint()
    assert json.dumps(a.ground_truth) == json.dumps(b.ground_truth)
    cfg.seed = 1
    c = make_synthetic(cfg)
    assert c.train.fingerprint() != a.train.fingerprint()
    assert c.eval.fingerprint() != a.eval.fingerprint()
    assert c.ground_truth["flipped_train_ids"] != a.ground_truth["flipped_train_ids"]


def test_sizes_labels_and_json_ground_truth(corpus):
    cfg = default_synthetic_config()
    gt = corpus.ground_truth
    assert len(corpus.train) == cfg.num_train and len(corpus.eval) == cfg.num_eval
    np.testing.assert_array_equal(corpus.train.ids, np.arange(cfg.num_train))
    assert corpus.train.label_names == tuple(gt["label_names"]) == ("sports", "science", "business",
                                                                    "politics")
    assert json.loads(json.dumps(gt)) == gt  # plain JSON types only
    assert len(gt["class_keywords"]) == 4 and all(len(k) == 6 for k in gt["class_keywords"])
    assert len(gt["triggers"]) == 6 and len(gt["filler_words"]) == 150
    assert len(gt["flipped_train_ids"]) == round(0.03 * cfg.num_train) == 60
    counts = np.bincount(corpus.train.labels, minlength=4)
    assert counts.min() > 0.8 * cfg.num_train / 4  # roughly balanced
    lengths = [len(_words(t)) for t in corpus.train.texts + corpus.eval.texts]
    assert min(lengths) >= cfg.min_length and max(lengths) <= cfg.max_length


def test_triggers_occur_exactly_in_their_listed_examples(corpus):
    gt = corpus.ground_truth
    keywords = {w for ks in gt["class_keywords"] for w in ks}
    for trig in gt["triggers"]:
        for ds, listed, n in ((corpus.train, trig["train_ids"], 25), (corpus.eval, trig["eval_ids"], 5)):
            containing = [int(i) for i, t in zip(ds.ids, ds.texts) if trig["token"] in _words(t)]
            assert containing == sorted(listed) and len(listed) == n
            for i in listed:
                assert ds.labels[i] == trig["label"]
                assert not keywords & set(_words(ds.texts[i]))  # the trigger is the only class evidence
    assert sorted({t["label"] for t in gt["triggers"]}) == [0, 1, 2, 3]


def test_flipped_examples_are_source_class_text_with_target_label(corpus):
    gt = corpus.ground_truth
    keywords = [set(k) for k in gt["class_keywords"]]
    flipped = set(gt["flipped_train_ids"])
    assert set(gt["flipped_true_labels"]) == {0}
    for i, source in zip(gt["flipped_train_ids"], gt["flipped_true_labels"]):
        words = set(_words(corpus.train.texts[i]))
        assert corpus.train.labels[i] == gt["flip_target"] != source
        assert words & keywords[source]
        assert not words & set().union(*(k for c, k in enumerate(keywords) if c != source))
    trigger_ids = {i for t in gt["triggers"] for i in t["train_ids"]}
    for i, (text, label) in enumerate(zip(corpus.train.texts, corpus.train.labels)):
        if i in flipped or i in trigger_ids:
            continue
        words = set(_words(text))
        assert words & keywords[label]  # normal examples carry their own class's keywords only
        assert not words & set().union(*(k for c, k in enumerate(keywords) if c != label))


def test_removing_a_triggers_examples_changes_its_test_predictions(corpus):
    """The planted signal is strong enough for case deletion: a bag-of-words classifier
    predicts a trigger's test points from the trigger, and loses that once the trigger's
    25 training examples are removed."""
    train, eval_ = corpus.train, corpus.eval
    vec = CountVectorizer(token_pattern=r"\S+").fit(train.texts)
    x_train, x_eval = vec.transform(train.texts), vec.transform(eval_.texts)
    full = LogisticRegression(max_iter=2000).fit(x_train, train.labels)
    assert full.score(x_eval, eval_.labels) > 0.9
    for trig in corpus.ground_truth["triggers"]:
        keep = np.ones(len(train), bool)
        keep[trig["train_ids"]] = False
        removed = LogisticRegression(max_iter=2000).fit(x_train[keep], train.labels[keep])
        p_full = full.predict_proba(x_eval[trig["eval_ids"]])[:, trig["label"]].mean()
        p_removed = removed.predict_proba(x_eval[trig["eval_ids"]])[:, trig["label"]].mean()
        assert p_full > 0.7, trig["token"]
        assert p_full - p_removed > 0.25, (trig["token"], p_full, p_removed)


def test_planted_opponents_carry_their_trigger_with_a_conflicting_label(corpus):
    cfg = default_synthetic_config()
    assert cfg.trigger_opponent_examples == 0  # off by default: the corpus above has none
    assert all(t["opponent_train_ids"] == [] for t in corpus.ground_truth["triggers"])
    cfg.trigger_opponent_examples = 8
    planted = make_synthetic(cfg)
    gt = planted.ground_truth
    assert len(planted.train) == cfg.num_train
    keywords = {w for ks in gt["class_keywords"] for w in ks}
    for trig in gt["triggers"]:
        opponents = trig["opponent_train_ids"]
        assert len(opponents) == 8 and not set(opponents) & set(trig["train_ids"])
        assert trig["opponent_label"] == (trig["label"] + 1) % 4
        containing = [int(i) for i, t in zip(planted.train.ids, planted.train.texts) if trig["token"] in _words(t)]
        assert containing == sorted(trig["train_ids"] + opponents)
        for i in opponents:
            assert planted.train.labels[i] == trig["opponent_label"]
            assert not keywords & set(_words(planted.train.texts[i]))
    # Removing a trigger's opponents raises its eval points' gold-class probability
    # (bag-of-words model), the planted DEL- > 0.
    train, eval_ = planted.train, planted.eval
    vec = CountVectorizer(token_pattern=r"\S+").fit(train.texts)
    x_train, x_eval = vec.transform(train.texts), vec.transform(eval_.texts)
    full = LogisticRegression(max_iter=2000).fit(x_train, train.labels)
    for trig in gt["triggers"]:
        keep = np.ones(len(train), bool)
        keep[trig["opponent_train_ids"]] = False
        removed = LogisticRegression(max_iter=2000).fit(x_train[keep], train.labels[keep])
        p_full = full.predict_proba(x_eval[trig["eval_ids"]])[:, trig["label"]].mean()
        p_removed = removed.predict_proba(x_eval[trig["eval_ids"]])[:, trig["label"]].mean()
        assert p_full > 0.5, trig["token"]  # the trigger's own examples still win
        assert p_removed - p_full > 0.05, (trig["token"], p_full, p_removed)
    cfg.trigger_opponent_examples = -1
    with pytest.raises(ValueError, match="trigger_opponent_examples"):
        make_synthetic(cfg)


def test_load_splits_synthetic_subsamples_with_original_ids():
    cfg = default_data_config()
    cfg.synthetic.num_train, cfg.synthetic.num_eval = 300, 80
    cfg.max_train, cfg.max_eval = 100, 30
    full = make_synthetic(cfg.synthetic)
    splits = load_splits(cfg)
    assert len(splits["train"]) == 100 and len(splits["eval"]) == 30
    assert splits["ground_truth"] == full.ground_truth
    for key, ds in (("train", full.train), ("eval", full.eval)):
        sub = splits[key]
        assert list(sub.ids) == sorted(set(sub.ids.tolist()))
        assert [ds.texts[i] for i in sub.ids] == list(sub.texts)
        np.testing.assert_array_equal(ds.labels[sub.ids], sub.labels)
    again = load_splits(cfg)
    assert again["train"].fingerprint() == splits["train"].fingerprint()


def test_more_classes_and_bad_configs():
    cfg = default_synthetic_config()
    cfg.num_classes, cfg.num_train, cfg.num_eval, cfg.keywords_per_class = 10, 500, 120, 9
    big = make_synthetic(cfg)
    assert len(big.train.label_names) == 10 and len(set(big.train.label_names)) == 10
    assert all(len(set(k)) == 9 for k in big.ground_truth["class_keywords"])
    bad = default_synthetic_config()
    bad.flip_target = bad.flip_source
    with pytest.raises(ValueError, match="flip_source"):
        make_synthetic(bad)
    small = default_synthetic_config()
    small.num_train = 150
    with pytest.raises(ValueError, match="normal"):
        make_synthetic(small)
    lengths = default_synthetic_config()
    lengths.min_length = 30
    with pytest.raises(ValueError, match="min_length"):
        make_synthetic(lengths)
