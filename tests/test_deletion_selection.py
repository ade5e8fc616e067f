"""Test points chosen by the run's own model, and DEL read against the random control
(docs/method.md "Case-deletion evaluation").

The run's final model picks the test points (correct, gold-class probability in a window).
Retraining the run's own seed would reproduce that model, so the default design excludes
it. What remains in a sweep's DEL is an offset shared by all of them: the no-removal
baseline of a seed is one retraining, every removal its own. The paired difference
``method − random`` cancels it; here a "method" that removes random examples too (``null``)
must come out at 0 against ``random``.
"""
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from tracin_jax import config as config_lib
from tracin_jax import mesh as mesh_lib
from tracin_jax.deletion.plan import load_manifest, positions_of_ids
from tracin_jax.deletion.report import sweep_report
from tracin_jax.deletion.runner import load_results, run_sweep
from tracin_jax.rankings import Rankings
from tracin_jax.stages.rankings import random_control
from tracin_jax.stages.sweep import final_params, plan_from_run
from tracin_jax.train import predict_proba, prepare_run, train

REPO = Path(__file__).resolve().parent.parent
WINDOW = (0.5, 0.95)
K = 10


def selection_config():
    """The planted corpus at test size; a one-layer BERT whose gold-class probabilities on
    the correct eval points spread over 0.90-0.99, so the window keeps the run's less
    confident ones (32 of 120 with data seed 0)."""
    cfg = config_lib.load_config(REPO / "configs" / "demo.py")
    cfg.data.synthetic.num_train = 480
    cfg.data.synthetic.num_eval = 120
    cfg.data.synthetic.num_triggers = 2
    cfg.data.synthetic.trigger_train_examples = 5
    cfg.data.synthetic.trigger_eval_examples = 2
    cfg.data.synthetic.trigger_opponent_examples = 0
    cfg.tokenizer.max_length = 20
    cfg.model.hidden_size = 64
    cfg.model.intermediate_size = 128
    cfg.model.num_hidden_layers = 1
    cfg.model.max_position_embeddings = 32
    cfg.train.lr = 3e-3
    cfg.train.epochs = 4
    cfg.train.num_devices = 1
    cfg.train.log_every_steps = 1000
    cfg.train.checkpoint_every_epochs = 4
    cfg.sweep.methods = ("null", "random")
    cfg.sweep.k_grid = (K,)
    cfg.sweep.signs = ("+",)
    cfg.sweep.seeds = (0,)  # the run's own seed: the default design replaces it
    cfg.sweep.num_devices = 1
    cfg.sweep.heldout_size = 8
    cfg.sweep.bootstrap = 400
    cfg.sweep.test_points = "correct"
    with cfg.ignore_type():
        cfg.sweep.test_points_prob_range = WINDOW
    return cfg


def control_rankings(setup) -> dict:
    """``random`` and ``null``: K other random training examples per test point."""
    control = random_control(setup.eval.ids, setup.eval.labels, setup.train.ids, K)
    rng = np.random.default_rng(12345)
    picks = np.stack([rng.permutation(np.asarray(setup.train.ids))[:2 * K] for _ in control.test_ids])
    null = Rankings.from_ids("null", control.test_ids, control.test_labels, picks[:, :K], picks[:, K:])
    return {"random": control, "null": null}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection")
    cfg = selection_config()
    run_dir = root / "run"
    setup = prepare_run(cfg, run_dir)
    train(cfg, run_dir, setup=setup, progress=False)
    return root, run_dir, setup, control_rankings(setup)


def test_the_default_design_reads_a_null_method_as_no_effect(trained):
    root, run_dir, setup, rankings = trained
    sweep_dir = root / "default"
    manifest = plan_from_run(setup.cfg.sweep, run_dir, sweep_dir, rankings=rankings, setup=setup,
                             measure=False, echo=None)
    assert manifest["seeds"] == [1]
    assert all(job["seed"] != 0 for job in manifest["jobs"])  # the selecting run is never retrained
    assert len(manifest["test_points"]) >= 20
    run_sweep(sweep_dir, setup=setup, progress=False, echo=None)
    summary = sweep_report(sweep_dir, plots=False, level=0.99)
    (diff,) = [d for d in summary["differences"] if (d["a"], d["b"]) == ("null", "random")]
    # Measured (data seeds 0-4, this configuration): null − random = +0.020, −0.021,
    # +0.100 (13 test points), −0.040, −0.025 (spread 0.05), each 99% interval holding 0,
    # while the controls' own DEL+ carried the shared offset: random −0.009, +0.163, −0.110,
    # −0.010, +0.020 and null +0.011, +0.142, −0.010, −0.049, −0.006 (on data seed 1 both
    # about +0.15, intervals excluding 0). 0.15 is three times the spread of the difference.
    assert abs(diff["difference"]) < 0.15, diff
    low, high = diff["ci"]
    assert low < 0.0 < high, diff


def test_the_runs_own_seed_reproduces_the_selecting_model(trained):
    """Why ``exclude_run_seed``: without it the baseline retraining with the run's seed is the
    model that chose the test points (its probabilities, up to float noise), so DEL would
    measure how far other models fall back from that selection."""
    root, run_dir, setup, rankings = trained
    sweep = ml_collections.ConfigDict(setup.cfg.sweep.to_dict())
    sweep.exclude_run_seed = False
    sweep_dir = root / "own_seed"
    # no stores and no random rankings given: the plan draws the control itself, as random_control
    manifest = plan_from_run(sweep, run_dir, sweep_dir, rankings={"null": rankings["null"]}, setup=setup,
                             measure=False, echo=None)
    for job in manifest["jobs"]:
        for tag in job["tags"]:
            if tag.get("method") == "random":
                assert job["removed"] == sorted(rankings["random"].top(tag["test"], "proponents", K).tolist())
    first = manifest["jobs"][0]
    assert manifest["seeds"] == [0] and first["tags"] == [{"kind": "baseline"}] and first["seed"] == 0
    run_sweep(sweep_dir, setup=setup, progress=False, echo=None, max_jobs=1)
    result = load_results(sweep_dir, load_manifest(sweep_dir))[first["id"]]
    rows = positions_of_ids(setup.eval.ids, result["eval_ids"], "evaluation point")
    probs = predict_proba(setup.model, final_params(run_dir), setup.eval.subset(rows), 64, mesh_lib.make_mesh(1))
    gold = probs[np.arange(len(rows)), np.asarray(setup.eval.labels)[rows]]
    np.testing.assert_allclose(result["gold_prob"], gold, atol=5e-3)
    assert ((gold >= WINDOW[0]) & (gold <= WINDOW[1])).all()
