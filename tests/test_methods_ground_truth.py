"""Ground truth on the synthetic corpus: for the planted trigger test points, TracIn-WE-topk
proponents find the trigger's training examples far more often than TracIn-last's.

A trigger token is the only class evidence of its 15 training examples (the demo
config), so they are the true proponents of its eval points. With the demo's 5
planted opponents per trigger (the trigger in examples of another class) and 5
epochs, over data/model seeds 0-8 precision@10 was tracin_we_topk 0.70-0.98,
tracin_last 0.29-0.61, a gap of 0.24-0.52, eval accuracy 0.86-0.99 (seed 0, this
test: 0.977 vs 0.597, accuracy 0.95); without opponents (3 epochs) the gap was
0.37-0.88. The test asserts a 0.25 margin.
"""
import pytest

from tracin_jax import config as config_lib
from tracin_jax.stages.demo import trigger_precision, trigger_relevance
from tracin_jax.stages.gradients import run_gradients
from tracin_jax.train import prepare_run, train

from test_train import REPO

MARGIN = 0.25


@pytest.mark.slow
def test_trigger_precision_at_10_we_topk_beats_last(tmp_path):
    cfg = config_lib.load_config(REPO / "configs" / "demo.py")
    cfg.data.synthetic.num_train = 600
    cfg.data.synthetic.num_eval = 120
    run = tmp_path / "run"
    setup = prepare_run(cfg, run)
    result = train(cfg, run, setup=setup, progress=False)
    assert result.eval_metrics["accuracy"] > 0.9
    train_store = run_gradients(run, "train", tmp_path / "train", setup=setup, progress=False)
    assert train_store.manifest["k"] == 10
    relevant = trigger_relevance(setup.extras["ground_truth"])
    assert len(relevant) == 6 * 5  # 6 triggers x 5 eval points
    precision = trigger_precision(setup, run, train_store, tmp_path / "triggers", progress=False)
    assert set(precision) == {"tracin_we_topk", "tracin_last"}
    assert precision["tracin_we_topk"] >= 0.8
    assert precision["tracin_we_topk"] >= precision["tracin_last"] + MARGIN, precision
