"""Mislabel clustering (appendix A): hard-example selection, influence distance,
agglomerative clustering (parity with scipy), and recovery of the synthetic corpus's
planted flipped-label group end to end through ``tracin-jax analyze clusters``."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from tracin_jax.analysis import clusters as cl
from tracin_jax.stages.analyses import clusters_of_run


def test_misclassification_rate_and_selection():
    labels = np.array([0, 1, 1, 0])
    # R = 5 models; example 0 always right, 1 wrong twice (40%), 2 wrong once, 3 always wrong.
    preds = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 0, 1], [0, 1, 1, 1], [0, 1, 1, 1]])
    probs = np.eye(2)[preds]  # [5, 4, 2]
    rate = cl.misclassification_rate(probs, labels)
    np.testing.assert_allclose(rate, [0.0, 0.4, 0.2, 1.0])
    np.testing.assert_array_equal(cl.select_hard(rate), [1, 3])  # >= 40% (appendix A)
    np.testing.assert_array_equal(cl.select_hard(rate, 0.5), [3])
    with pytest.raises(ValueError, match="R, N, C"):
        cl.misclassification_rate(probs[0], labels)
    with pytest.raises(ValueError, match="min_error_rate"):
        cl.select_hard(rate, 0.0)


def test_influence_distance_by_hand():
    scores = np.array([[4.0, 2.0, -1.0],
                       [2.0, 1.0, 0.5],
                       [-1.0, 0.5, 9.0]])
    d = cl.influence_distance(scores)
    expected = np.array([[0.0, 1 - 2 / 2, 1 + 1 / 6],
                         [0.0, 0.0, 1 - 0.5 / 3],
                         [0.0, 0.0, 0.0]])
    expected = expected + expected.T
    np.testing.assert_allclose(d, expected)
    # Float round-off asymmetry is averaged away; values below 0 are clipped.
    d2 = cl.influence_distance(np.array([[1.0, 1.2], [1.0, 1.0]]))
    np.testing.assert_allclose(d2, [[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="self-influence"):
        cl.influence_distance(np.array([[1.0, 0.1], [0.1, 0.0]]))
    with pytest.raises(ValueError, match="square"):
        cl.influence_distance(np.ones((2, 3)))


@pytest.mark.parametrize("method", ["average", "complete", "single"])
def test_clustering_matches_scipy(method):
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(c, 0.15, size=(6, 2)) for c in ((0, 0), (2, 0), (0, 2))]
                            + [rng.normal(5, 3, size=(4, 2))])
    d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    got = cl.cluster_by_distance(d, threshold=0.8, min_size=3, linkage=method)
    ref = fcluster(linkage(squareform(d, checks=False), method=method), t=0.8, criterion="distance")
    expected = sorted([np.flatnonzero(ref == c) for c in np.unique(ref) if np.sum(ref == c) >= 3],
                      key=lambda g: (-len(g), int(g[0])))
    assert [g.tolist() for g in got] == [g.tolist() for g in expected]
    assert len(got) >= 3  # the three tight blobs


@pytest.fixture(scope="module")
def flipped_run(tmp_path_factory):
    """A tiny CNN on a synthetic corpus whose flipped group (sports keywords labelled
    'science') is homogeneous: two keywords per class, short texts."""
    from tracin_jax import config as config_lib
    from tracin_jax.train import prepare_run, train
    cfg = config_lib.base_config()
    cfg.data.source = "synthetic"
    s = cfg.data.synthetic
    s.num_train, s.num_eval, s.num_filler = 400, 60, 60
    s.num_triggers, s.trigger_train_examples, s.trigger_eval_examples = 2, 10, 2
    s.keywords_per_class, s.keyword_prob, s.max_length, s.flip_fraction = 2, 0.5, 12, 0.04
    cfg.tokenizer.max_length = 24
    cfg.model.kind = "cnn"
    cfg.model.embed_dim, cfg.model.filters, cfg.model.kernel_sizes = 16, 16, (3, 1)
    cfg.train.optimizer, cfg.train.lr, cfg.train.epochs, cfg.train.batch_size = "adamw", 1e-2, 8, 32
    cfg.train.checkpoint_every_epochs = 4
    cfg.train.num_devices = 1
    run = tmp_path_factory.mktemp("run")
    setup = prepare_run(cfg, run)
    train(cfg, run, setup=setup, progress=False)
    return run, setup.extras["ground_truth"]


def test_planted_flipped_group_is_recovered(flipped_run, tmp_path, capsys):
    from tracin_jax.cli import main
    run, truth = flipped_run
    out = tmp_path / "clusters"
    # The N models are early-stopped (2 of the run's 8 epochs) so they do not memorise the flips.
    assert main(["analyze", "clusters", "--run", str(run), "--models", "3", "--epochs", "2",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "clusters.json").read_text())
    hardness = json.loads((out / "hardness.json").read_text())
    flipped = set(truth["flipped_train_ids"])
    hard_flipped = flipped & set(hardness["hard_ids"])
    assert len(hard_flipped) >= 0.75 * len(flipped)  # mislabelled examples are the hard ones
    assert summary["clusters"] == len(report["clusters"]) >= 1
    top = report["clusters"][0]
    # The largest cluster is the flipped group: only flipped examples, most of them.
    assert set(top["members"]) <= flipped
    assert len(top["members"]) >= 0.6 * len(hard_flipped)
    assert set(top["labels"]) == {truth["flip_target"]}
    assert set(top["predictions"]) == {truth["flipped_true_labels"][0]}
    # ... explained by the source class's keywords.
    source_keywords = set(truth["class_keywords"][truth["flipped_true_labels"][0]])
    assert source_keywords & {t for t, _ in top["common_tokens"][:2]}
    assert not {"[CLS]", "[SEP]"} & {t for c in report["clusters"] for t, _ in c["common_tokens"]}
    assert all(c["mean_distance"] < cl.DISTANCE_THRESHOLD for c in report["clusters"])
    md = (out / "clusters.md").read_text()
    assert "| cluster | size | common words |" in md and "## Cluster 1" in md


def test_given_hard_positions_skip_training(flipped_run, tmp_path):
    from tracin_jax.train import load_run
    run, truth = flipped_run
    setup = load_run(run)
    rows = np.flatnonzero(np.isin(setup.train.ids, truth["flipped_train_ids"]))
    report = clusters_of_run(run, tmp_path, hard_positions=rows, setup=setup)
    assert report.num_models == 0 and report.num_hard == len(rows)
    members = [m for c in report.clusters for m in c.members]
    assert set(members) <= set(truth["flipped_train_ids"]) and len(members) >= 3
    assert "n/a" in report.markdown()
    with pytest.raises(ValueError, match="nothing to cluster"):
        clusters_of_run(run, tmp_path, hard_positions=rows[:1], setup=setup)
