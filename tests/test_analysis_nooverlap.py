"""No-word-overlap experiment (sec. 5, appendix J): candidate sets, overlap statistics, and
the whole pipeline (frozen embedding, rankings restricted to candidates, deletion sweep)
on a tiny override of configs/nooverlap_synthetic.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tracin_jax.analysis import nooverlap as no
from tracin_jax.stages.analyses import run_nooverlap
from tracin_jax.data import TextDataset, WordTokenizer, encode_dataset

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _ds(texts, ids):
    return TextDataset(texts=tuple(texts), text_pairs=None, labels=np.zeros(len(texts), np.int32),
                       ids=np.asarray(ids, np.int64), label_names=("a",), name="t")


def test_lowest_tfidf_sets_and_shared_tokens():
    train = _ds(["red apple pie", "green apple", "blue sky", "sky high", "red sky"], [10, 11, 12, 13, 14])
    test = _ds(["red apple", "blue sky"], [7, 8])
    sets = no.lowest_tfidf_sets(test, train, 2)
    assert set(sets) == {7, 8}
    np.testing.assert_array_equal(sets[7], [12, 13])  # no shared words, ties by position
    np.testing.assert_array_equal(sets[8], [10, 11])
    tok = WordTokenizer(list(WordTokenizer.SPECIALS) + "red apple pie green blue sky high".split(), max_length=8)
    stats = no.shared_tokens(encode_dataset(test, tok, 8), encode_dataset(train, tok, 8), sets,
                             ignore=[tok.pad_id, *tok.special_ids])
    assert stats == {"mean_shared_tokens": 0.0, "share_without_overlap": 1.0, "pairs": 4}
    with_specials = no.shared_tokens(encode_dataset(test, tok, 8), encode_dataset(train, tok, 8), sets,
                                     ignore=[tok.pad_id])
    assert with_specials["mean_shared_tokens"] == pytest.approx(2.0)  # start and end tokens


def test_random_control_draws_from_each_test_points_candidates():
    from tracin_jax.stages.rankings import random_control
    train_ids = np.arange(100, 160)
    candidates = {7: np.arange(100, 120), 8: np.arange(140, 160)}
    r = random_control([7, 8], [0, 1], train_ids, 5, per_test_candidates=candidates)
    for t in (7, 8):
        picked = np.concatenate([r.top(t, "proponents", 5), r.top(t, "opponents", 5)])
        assert len(set(picked.tolist())) == 10 and set(picked.tolist()) <= set(candidates[t].tolist())
    # Unrestricted, the same test ids draw from the whole training set, as before.
    free = random_control([7, 8], [0, 1], train_ids, 5)
    assert not set(free.top(7, "proponents", 5).tolist()) <= set(candidates[7].tolist())
    with pytest.raises(ValueError, match="needs 12 training examples"):
        random_control([7], [0], train_ids, 6, per_test_candidates={7: np.arange(100, 110)})
    with pytest.raises(ValueError, match="no entry for test ids"):
        random_control([9], [0], train_ids, 2, per_test_candidates=candidates)


def test_requires_frozen_embedding(tmp_path):
    from tracin_jax.config import load_config
    cfg = load_config(CONFIGS / "nooverlap_synthetic.py")
    cfg.train.freeze_word_embeddings = False
    with pytest.raises(ValueError, match="freeze_word_embeddings"):
        run_nooverlap(cfg, tmp_path)


@pytest.mark.slow
def test_pipeline_on_tiny_synthetic(tmp_path):
    from tracin_jax.config import apply_overrides, load_config
    from tracin_jax.store import GradientStore
    from tracin_jax.train import CheckpointStore, load_run
    cfg = apply_overrides(load_config(CONFIGS / "nooverlap_synthetic.py"), [
        "data.synthetic.num_train=160", "data.synthetic.num_eval=40", "data.synthetic.num_triggers=2",
        "data.synthetic.trigger_train_examples=6", "data.synthetic.trigger_eval_examples=2",
        "data.synthetic.max_length=10", "tokenizer.max_length=12", "model.hidden_size=16",
        "model.intermediate_size=32", "model.max_position_embeddings=16", "train.epochs=2",
        "train.num_devices=1", "nooverlap.num_candidates=40", "test_points.per_class=1",
        "sweep.k_grid=(2, 4)", "sweep.seeds=(0,)", "sweep.heldout_size=0", "sweep.bootstrap=10"])
    lines = []
    summary = run_nooverlap(cfg, tmp_path, echo=lines.append)
    candidates = {int(k): set(v) for k, v in json.loads((tmp_path / "candidates.json").read_text()).items()}
    assert len(candidates) == 2 and all(len(c) == 40 for c in candidates.values())
    # Every removal the sweep made comes from the test point's own candidates.
    manifest = json.loads((tmp_path / "sweep" / "manifest.json").read_text())
    dels = [(t, j) for j in manifest["jobs"] for t in j["tags"] if t["kind"] == "del"]
    assert {t["method"] for t, _ in dels} == set(no.NOOVERLAP_METHODS)
    assert all(set(j["removed"]) <= candidates[t["test"]] for t, j in dels)
    assert summary["jobs"]["finished"] == summary["jobs"]["total"]
    table = Path(summary["files"]["table_md"]).read_text()
    assert "AUC-DEL+" in table
    assert 0.0 <= summary["overlap"]["share_without_overlap"] <= 1.0
    assert any("candidates" in line for line in lines)
    # Frozen embedding: every checkpoint holds the initial table.
    setup = load_run(tmp_path / "run")
    store = CheckpointStore(tmp_path / "run" / "checkpoints")
    first, last = (store.restore_params(s) for s in (store.steps()[0], store.steps()[-1]))
    store.close()
    table0 = setup.params["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(first["embeddings"]["word_embeddings"]["embedding"], table0)
    np.testing.assert_array_equal(last["embeddings"]["word_embeddings"]["embedding"], table0)
    assert GradientStore(tmp_path / "grads" / "train").manifest["k"] is None
