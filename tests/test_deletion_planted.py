"""The planted ordering: on trigger test points, TracIn-WE-topk's proponents and opponents
matter more than TracIn-last's.

A trigger token's training examples are the only evidence for its eval points
(tracin_jax.data.synthetic), so removing the right k proponents must drop the
gold-class probability (DEL+ < 0); its planted opponents (the trigger in examples
labelled with a conflicting class) hold that probability down, so removing them
must raise it (DEL− > 0). TracIn-WE-topk finds both through the shared trigger
token; TracIn-last's neighbours are mostly other high-loss or same-class examples.
The whole pipeline runs for real: train -> gradient stores -> rankings -> sweep
plan -> replica retraining -> report.
"""
from pathlib import Path

from tracin_jax import config as config_lib
from tracin_jax.stages.demo_deletion import demo_sweep_config, run_deletion_demo
from tracin_jax.stages.gradients import run_gradients
from tracin_jax.train import prepare_run, train

REPO = Path(__file__).resolve().parent.parent


def planted_config(seed: int = 0, opponents: int = 4):
    cfg = config_lib.load_config(REPO / "configs" / "demo.py")
    cfg.seed = seed
    cfg.data.synthetic.seed = seed
    cfg.data.synthetic.num_train = 480
    cfg.data.synthetic.num_eval = 80
    cfg.data.synthetic.num_triggers = 4
    cfg.data.synthetic.trigger_train_examples = 10
    cfg.data.synthetic.trigger_opponent_examples = opponents
    cfg.data.synthetic.trigger_eval_examples = 2
    cfg.tokenizer.max_length = 20
    # The demo's width: at H32 the 4-epoch models barely learn the triggers (gold
    # probability ~0.4), so removing their opponents cannot show.
    cfg.model.hidden_size = 64
    cfg.model.intermediate_size = 128
    cfg.model.max_position_embeddings = 32
    cfg.train.epochs = 4
    cfg.train.num_devices = 1
    cfg.train.log_every_steps = 1000
    cfg.grads.shard_size = 256
    cfg.sweep.num_devices = 1
    cfg.sweep.heldout_size = 40
    cfg.sweep.bootstrap = 50
    return cfg


def planted_sweep(tmp_path: Path, seed: int = 0, seeds=(0, 1), k_grid=(10,), opponents: int = 4):
    cfg = planted_config(seed, opponents)
    run_dir = tmp_path / "run"
    setup = prepare_run(cfg, run_dir)
    train(cfg, run_dir, setup=setup, progress=False)
    train_store = run_gradients(run_dir, "train", tmp_path / "grads" / "train", setup=setup, progress=False)
    sweep_cfg = demo_sweep_config(setup.cfg, k_grid=k_grid, seeds=seeds, points_per_class=None)
    return run_deletion_demo(setup, run_dir, tmp_path / "sweep", train_store=train_store,
                             sweep_cfg=sweep_cfg, max_points=None, progress=False)  # all 8 trigger points


def assert_planted_ordering(deletion: dict) -> None:
    """AUC-DEL± (as the report prints them; here one k): TracIn-WE-topk's DEL+ < 0 and
    DEL− > 0, each larger in magnitude than TracIn-last's."""
    (we_plus, we_minus), (last_plus, last_minus) = (
        (deletion[m]["+"]["auc_del"], deletion[m]["-"]["auc_del"]) for m in ("tracin_we_topk", "tracin_last"))
    # Measured with this configuration (4 opponents per trigger), data seeds 0-4:
    # TracIn-WE-topk DEL+ -0.40..-0.63 and DEL- +0.086..+0.146; TracIn-last DEL+
    # -0.04..-0.60 and DEL- +0.016..+0.094, below TracIn-WE-topk's in magnitude on
    # every seed, by 0.03-0.36 (DEL+) and 0.01-0.13 (DEL-); seed 0, this test:
    # -0.49 / +0.144 against -0.35 / +0.016. Without planted opponents
    # (opponents=0) TracIn-WE-topk's DEL- is -0.005 and the DEL- checks fail.
    assert we_plus < -0.2, deletion
    assert we_minus > 0.05, deletion
    assert abs(we_plus) > abs(last_plus) and we_plus < last_plus, deletion
    assert abs(we_minus) > abs(last_minus) and we_minus > last_minus, deletion


def test_tracin_we_topk_proponents_and_opponents_move_trigger_points_more_than_tracin_last(tmp_path):
    summary = planted_sweep(tmp_path)
    assert summary["jobs"]["finished"] == summary["jobs"]["total"] and summary["jobs"]["failed"] == 0
    assert_planted_ordering(summary["deletion"])
    for name in ("table.md", "table.csv", "deletion_curves.png"):
        assert (tmp_path / "sweep" / "report" / name).stat().st_size > 0
