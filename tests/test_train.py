"""Fine-tuning: learning, learning rates in checkpoints, sharded == single, kill-and-resume."""
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracin_jax import config as config_lib
from tracin_jax import mesh as mesh_lib
from tracin_jax.errors import ConfigError
from tracin_jax.data import iterate_batches
from tracin_jax.train import (CheckpointStore, SimulatedCrash, TrainState, load_run, make_optimizer,
                              make_schedule, make_train_step, prepare_run, train)

REPO = Path(__file__).resolve().parent.parent


def tiny_config(**overrides):
    cfg = config_lib.load_config(REPO / "configs" / "demo.py")
    cfg.data.synthetic.num_train = 256
    cfg.data.synthetic.num_eval = 64
    cfg.data.synthetic.trigger_train_examples = 8
    cfg.data.synthetic.trigger_opponent_examples = 0  # no planted conflicts: a plainly learnable corpus
    cfg.data.synthetic.trigger_eval_examples = 2
    cfg.tokenizer.max_length = 24
    cfg.model.hidden_size = 16
    cfg.model.num_hidden_layers = 1
    cfg.model.num_attention_heads = 2
    cfg.model.intermediate_size = 32
    cfg.model.max_position_embeddings = 32
    cfg.model.hidden_dropout_prob = 0.1  # dropout on: resume must reproduce its rng stream
    cfg.train.batch_size = 16
    cfg.train.epochs = 2
    cfg.train.lr = 3e-3
    cfg.train.checkpoint_every_epochs = 1
    cfg.train.log_every_steps = 8
    return config_lib.apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_train_learns_and_checkpoints_record_learning_rate(tmp_path):
    cfg = tiny_config(**{"train.schedule": "linear", "train.epochs": 6, "train.lr": 5e-3,
                         "model.hidden_size": 32, "train.checkpoint_every_epochs": 2})
    result = train(cfg, tmp_path, progress=False)
    steps_per_epoch = 256 // 16
    assert [c.step for c in result.checkpoints] == [32, 64, 96]
    schedule = make_schedule(cfg.train, 6 * steps_per_epoch)
    for c in result.checkpoints:
        assert c.learning_rate == pytest.approx(float(schedule(c.step - 1)), rel=1e-6)
    assert result.checkpoints[0].learning_rate > result.checkpoints[-1].learning_rate > 0
    # 4 classes: chance accuracy 0.25, chance loss ln 4 = 1.386
    assert result.eval_metrics["accuracy"] > 0.4 and result.eval_metrics["loss"] < 1.0
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["final_step"] == 96
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in l for l in lines)
    # the run can be rebuilt from its directory for later stages
    setup = load_run(tmp_path)
    store = CheckpointStore(tmp_path / "checkpoints")
    params = store.restore_params(96)
    out = setup.model.apply({"params": params}, setup.eval.input_ids[:4], setup.eval.attention_mask[:4],
                            setup.eval.token_type_ids[:4])
    assert out.logits.shape == (4, 4)
    store.close()


def test_sharded_train_step_equals_single_device(tmp_path):
    cfg = tiny_config()
    setup = prepare_run(cfg, None)
    tx = make_optimizer(cfg.train, make_schedule(cfg.train, 10), setup.params)
    step = make_train_step(setup.model, tx, dropout_seed=0)
    results = []
    for n in (1, 8):
        mesh = mesh_lib.make_mesh(n)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=setup.params,
                           opt_state=tx.init(setup.params))
        state = mesh_lib.replicate(state, mesh)
        fn = jax.jit(step)
        keys = ("input_ids", "attention_mask", "token_type_ids", "labels", "weights")
        for i, batch in enumerate(iterate_batches(setup.train, 16, seed=0, epoch=0)):
            state, metrics = fn(state, mesh_lib.shard_batch({k: batch[k] for k in keys}, mesh))
            if i == 2:
                break
        results.append((_leaves(state.params), float(metrics["loss"])))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)


def _metrics(workdir):
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "elapsed_s"} for line in lines]


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, caplog):
    cfg = tiny_config(**{"train.log_every_steps": 5})  # logs at 5, 10, ...: checkpoint 16 is mid-window
    full = train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(SimulatedCrash):
        train(cfg, tmp_path / "killed", crash_after_step=26, progress=False)  # checkpoint at 16
    # the dead run logged steps 20 and 25 after its last checkpoint
    assert [m["step"] for m in _metrics(tmp_path / "killed")] == [5, 10, 15, 16, 20, 25]
    with caplog.at_level(logging.WARNING, logger="tracin_jax.train.trainer"):
        resumed = train(cfg, tmp_path / "killed", progress=False)
    assert any(r.levelno == logging.WARNING and "resuming from checkpoint step 16" in r.getMessage()
               for r in caplog.records)
    assert resumed.resumed_from == 16 and resumed.final_step == full.final_step == 32
    a = CheckpointStore(tmp_path / "full" / "checkpoints")
    b = CheckpointStore(tmp_path / "killed" / "checkpoints")
    for x, y in zip(_leaves(a.restore_params(32)), _leaves(b.restore_params(32))):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    a.close(), b.close()
    # metrics.jsonl as if never interrupted: no duplicate steps, the same values (the step-20
    # mean covers 16..20 on both, the resumed run restoring the window from checkpoint 16)
    full_metrics, resumed_metrics = _metrics(tmp_path / "full"), _metrics(tmp_path / "killed")
    assert [m["step"] for m in resumed_metrics] == [m["step"] for m in full_metrics]
    for x, y in zip(full_metrics, resumed_metrics):
        assert x == pytest.approx(y, rel=1e-5), (x, y)


def test_resume_with_changed_config_is_refused(tmp_path):
    train(tiny_config(**{"train.epochs": 1}), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        train(tiny_config(**{"train.epochs": 1, "train.lr": 1e-2}), tmp_path, progress=False)
    # A run written before a config key existed still loads: the key takes its default.
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    del saved["train"]["freeze_word_embeddings"]
    path.write_text(json.dumps(saved))
    assert load_run(tmp_path).cfg.train.freeze_word_embeddings is False
    saved["train"]["lr"] = 1e-2  # a real difference is still refused
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="different configuration"):
        prepare_run(tiny_config(**{"train.epochs": 1}), tmp_path)


def test_frozen_word_embeddings_do_not_move(tmp_path):
    cfg = tiny_config(**{"train.freeze_word_embeddings": True, "train.epochs": 1})
    setup = prepare_run(cfg, tmp_path)
    before = np.asarray(setup.params["embeddings"]["word_embeddings"]["embedding"]).copy()
    train(cfg, tmp_path, setup=setup, progress=False)
    store = CheckpointStore(tmp_path / "checkpoints")
    params = store.restore_params(16)
    np.testing.assert_array_equal(params["embeddings"]["word_embeddings"]["embedding"], before)
    assert not np.allclose(params["classifier"]["kernel"], setup.params["classifier"]["kernel"])
    store.close()


def test_config_overrides_parse_and_reject_unknown_keys():
    cfg = tiny_config()
    config_lib.apply_overrides(cfg, ["--config.train.lr=1e-2", "config.train.epochs=5",
                                     "model.kernel_sizes=(3, 3)", "train.optimizer=adamw",
                                     "model.hf_dir=/x/y"])
    assert cfg.train.lr == 1e-2 and cfg.train.epochs == 5 and cfg.model.kernel_sizes == (3, 3)
    assert cfg.model.hf_dir == "/x/y"
    with pytest.raises((KeyError, ConfigError), match="unknown config key"):
        config_lib.apply_overrides(cfg, ["train.learning_rate=1"])
    with pytest.raises(ValueError, match="key=value"):
        config_lib.apply_overrides(cfg, ["train.lr"])
    round_trip = config_lib.from_json(config_lib.to_json(cfg))
    assert round_trip.to_dict() == cfg.to_dict()


def test_shipped_configs_load():
    for path in sorted((REPO / "configs").glob("*.py")):
        cfg = config_lib.load_config(path)
        assert cfg.name == path.stem, path
        assert cfg.tokenizer.max_length <= 128
