"""The planted ordering: on trigger test points, TracIn-WE-topk's proponents matter, TracIn-last's don't.

A trigger token's training examples are the only evidence for its eval points
(tracin_jax.data.synthetic), so removing the right k proponents must drop the
gold-class probability; TracIn-last's proponents (same-class examples with large
last-layer gradients) are redundant and removing them changes little. The whole
pipeline runs for real: train -> gradient stores -> rankings -> sweep plan ->
replica retraining -> report.
"""
from pathlib import Path

from tracin_jax import config as config_lib
from tracin_jax.deletion.demo_stage import demo_sweep_config, run_deletion_demo
from tracin_jax.pipeline import run_gradients
from tracin_jax.train import prepare_run, train

REPO = Path(__file__).resolve().parent.parent


def planted_config(seed: int = 0):
    cfg = config_lib.load_config(REPO / "configs" / "demo.py")
    cfg.seed = seed
    cfg.data.synthetic.seed = seed
    cfg.data.synthetic.num_train = 480
    cfg.data.synthetic.num_eval = 80
    cfg.data.synthetic.num_triggers = 4
    cfg.data.synthetic.trigger_train_examples = 10
    cfg.data.synthetic.trigger_eval_examples = 2
    cfg.tokenizer.max_length = 20
    cfg.model.hidden_size = 32
    cfg.model.intermediate_size = 64
    cfg.model.max_position_embeddings = 32
    cfg.train.epochs = 4
    cfg.train.num_devices = 1
    cfg.train.log_every_steps = 1000
    cfg.grads.shard_size = 256
    cfg.sweep.num_devices = 1
    cfg.sweep.heldout_size = 40
    cfg.sweep.bootstrap = 50
    return cfg


def planted_sweep(tmp_path: Path, seed: int = 0, seeds=(0, 1), k_grid=(10,)):
    cfg = planted_config(seed)
    run_dir = tmp_path / "run"
    setup = prepare_run(cfg, run_dir)
    train(cfg, run_dir, setup=setup, progress=False)
    train_store = run_gradients(run_dir, "train", tmp_path / "grads" / "train", setup=setup, progress=False)
    sweep_cfg = demo_sweep_config(setup.cfg, k_grid=k_grid, seeds=seeds, points_per_class=None)
    return run_deletion_demo(setup, run_dir, tmp_path / "sweep", train_store=train_store,
                             sweep_cfg=sweep_cfg, max_points=None, progress=False)  # all 8 trigger points


def test_tracin_we_topk_proponents_move_trigger_points_more_than_tracin_last(tmp_path):
    summary = planted_sweep(tmp_path)
    assert summary["jobs"]["finished"] == summary["jobs"]["total"] and summary["jobs"]["failed"] == 0
    we, last = (summary["deletion"][m]["+"]["auc_del"] for m in ("tracin_we_topk", "tracin_last"))
    # Removing the 10 top WE proponents (mostly the trigger's own examples) drops the
    # gold probability by 0.11-0.20 over data seeds 0-4; TracIn-last's moves it by
    # -0.006..+0.012 (checked with this configuration before fixing the margins).
    assert we < -0.06, summary["deletion"]
    assert we < last - 0.06, summary["deletion"]
    for name in ("table.md", "table.csv", "deletion_curves.png"):
        assert (tmp_path / "sweep" / "report" / name).stat().st_size > 0
