"""Replica retraining: vmapped replica r == the trainer's single run; exact removal; sharded twin."""
from pathlib import Path

import jax
import numpy as np
import pytest

from tracin_jax import config as config_lib
from tracin_jax import mesh as mesh_lib
from tracin_jax.data import batch_order, iterate_batches, num_batches
from tracin_jax.deletion.cost import choose_num_replicas, replica_bytes
from tracin_jax.deletion.replicas import ReplicaTrainer, gather_batch, initial_params
from tracin_jax.deletion.schedule import ReplicaSpec, run_lengths, slot_plan
from tracin_jax.train import CheckpointStore, predict_proba, prepare_run, train

REPO = Path(__file__).resolve().parent.parent


def tiny_config(**overrides):
    cfg = config_lib.load_config(REPO / "configs" / "demo.py")
    cfg.data.synthetic.num_train = 200
    cfg.data.synthetic.num_eval = 40
    cfg.data.synthetic.trigger_train_examples = 6
    cfg.data.synthetic.trigger_eval_examples = 2
    cfg.tokenizer.max_length = 16
    cfg.model.hidden_size = 16
    cfg.model.num_hidden_layers = 1
    cfg.model.num_attention_heads = 2
    cfg.model.intermediate_size = 32
    cfg.model.max_position_embeddings = 32
    cfg.model.hidden_dropout_prob = 0.1  # dropout on: replicas must reproduce its rng stream
    cfg.train.optimizer = "sgd"  # momentum: the optimizer state must be masked too
    cfg.train.lr = 0.05
    cfg.train.schedule = "linear"  # per-replica schedule length
    cfg.train.warmup_steps = 3
    cfg.train.batch_size = 16
    cfg.train.epochs = 2
    cfg.train.log_every_steps = 100
    return config_lib.apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def setup():
    return prepare_run(tiny_config(), None)


def _keeps(n, rng):
    full = np.ones(n, bool)
    some = full.copy()
    some[rng.choice(n, 20, replace=False)] = False  # 180 kept: 12 batches, not 13
    few = full.copy()
    few[rng.choice(n, 3, replace=False)] = False
    return [full, some, few, some]


SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def single_runs(setup, tmp_path_factory):
    """The trainer's own runs (train(seed=s, keep=keep)) of replicas 1 and 2: params, probs."""
    keeps = _keeps(len(setup.train), np.random.default_rng(0))
    out = {}
    for r in (1, 2):  # a shortened run (fewer batches per epoch) and an unshortened one
        single_cfg = config_lib.from_json(config_lib.to_json(setup.cfg))
        single_cfg.seed = SEEDS[r]
        single_cfg.train.num_devices = 1
        workdir = tmp_path_factory.mktemp(f"single{r}")
        result = train(single_cfg, workdir, keep=keeps[r], progress=False)
        store = CheckpointStore(workdir / "checkpoints")
        params = store.restore_params(result.final_step)
        store.close()
        probs = predict_proba(setup.model, params, setup.eval, 16, mesh_lib.make_mesh(1))[:12]
        out[r] = (result.final_step, params, probs)
    return keeps, out


# 4: one vmapped program (accelerators); 1: one replica after another (the CPU default).
# (lax.map over replicas inside the program: the sharded test below.)
@pytest.mark.parametrize("vmap_width", [4, 1])
def test_vmapped_replica_equals_single_training_run(setup, single_runs, vmap_width):
    """Replica r of one program == train(cfg with seed s_r, keep=keep_r)."""
    keeps, reference = single_runs
    specs = [ReplicaSpec(seed=s, keep=k) for s, k in zip(SEEDS, keeps)]
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, steps_per_call=5, vmap_width=vmap_width)
    run = trainer.train(specs)
    assert run.steps.tolist() == [2 * num_batches(int(k.sum()), 16) for k in keeps] == [26, 24, 26, 24]
    probs = trainer.predict(run, setup.eval, np.arange(12))
    assert probs.shape == (4, 12, 4)
    for r, (final_step, ref_params, ref_probs) in reference.items():
        assert final_step == run.steps[r]
        mine = jax.tree.map(lambda x: np.asarray(x)[r], run.params)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(probs[r], ref_probs, rtol=1e-4, atol=1e-5)
    # different seeds and removals give different models (the comparison above is not vacuous)
    assert not np.allclose(probs[0], probs[1], atol=1e-3)


def test_initial_params_match_prepare_run(setup):
    for a, b in zip(jax.tree.leaves(initial_params(setup.cfg, setup.model, 0)),
                    jax.tree.leaves(setup.params)):
        np.testing.assert_array_equal(a, b)


def test_slot_plan_is_exact_removal():
    """Each epoch: every kept row exactly once, in iterate_batches order; removed rows never."""
    cfg = tiny_config()
    n, bs = 50, 8
    rng = np.random.default_rng(1)
    keeps = [np.ones(n, bool), rng.random(n) > 0.3, np.zeros(n, bool)]
    specs = [ReplicaSpec(seed=s, keep=k) for s, k in zip((3, 4, 5), keeps)]
    spe, total = run_lengths([int(k.sum()) for k in keeps], bs, cfg.train)
    assert spe[0] == 7 and total[2] == 0
    for epoch in range(2):
        idx, active = slot_plan(specs, bs, cfg.train, epoch, int(spe.max()))
        assert not active[:, 2].any()
        for r, k in enumerate(keeps[:2]):
            rows = idx[active[:, r], r].ravel()
            rows = rows[rows >= 0]
            np.testing.assert_array_equal(rows, batch_order(n, seed=r + 3, epoch=epoch, keep=k))
            assert not np.isin(rows, np.flatnonzero(~k)).any()
            assert active[:, r].sum() == spe[r] and (idx[~active[:, r], r] == -1).all()


def test_gathered_batches_equal_iterate_batches(setup):
    """The device gather reproduces iterate_batches' batches, padding rows included."""
    keep = np.ones(len(setup.train), bool)
    keep[::7] = False
    spec = ReplicaSpec(seed=2, keep=keep)
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train)
    data = trainer.device_data()
    idx, active = slot_plan([spec], 16, setup.cfg.train, 1, 13)
    batches = list(iterate_batches(setup.train, 16, seed=2, epoch=1, keep=keep))
    assert active[:, 0].sum() == len(batches)
    for t, ref in enumerate(batches):
        got = gather_batch(data, idx[t, 0], setup.train.pad_id)
        for key in ("input_ids", "attention_mask", "token_type_ids", "labels", "weights"):
            np.testing.assert_array_equal(np.asarray(got[key]), ref[key], err_msg=key)


def test_removed_rows_have_no_effect_and_edits_apply(setup):
    """Corrupting only removed rows changes nothing; an edit changes the model."""
    n = len(setup.train)
    keep = np.ones(n, bool)
    keep[:40] = False
    corrupted = type(setup.train)(**{**setup.train.__dict__,
                                     "labels": np.where(keep, setup.train.labels, (setup.train.labels + 1) % 4),
                                     "input_ids": np.where(keep[:, None], setup.train.input_ids, 5)})
    runs = []
    for enc in (setup.train, corrupted):
        trainer = ReplicaTrainer(setup.cfg, setup.model, enc, epochs=1)
        runs.append(trainer.train([ReplicaSpec(seed=1, keep=keep)]))
    for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Edits: replacing a frequent token of the kept rows by [PAD] changes training.
    token = int(np.bincount(setup.train.input_ids[keep].ravel(), minlength=10)[5:].argmax() + 5)
    edits = np.where(keep, token, -1).astype(np.int32)
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, epochs=1)
    edited = trainer.train([ReplicaSpec(seed=1, keep=keep), ReplicaSpec(seed=1, keep=keep, edit_tokens=edits)])
    a, b = (jax.tree.map(lambda x: np.asarray(x)[i], edited.params) for i in (0, 1))
    np.testing.assert_allclose(jax.tree.leaves(a)[0], jax.tree.leaves(runs[0].params)[0][0], atol=1e-6)
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_replicas_sharded_over_devices_equal_single_device(setup):
    """Replicas split over 2 devices (shard_map; 2 per device, looped with lax.map) == 1 device."""
    n = len(setup.train)
    rng = np.random.default_rng(3)
    specs = [ReplicaSpec(seed=s, keep=rng.random(n) > 0.1) for s in range(3)]  # padded to 4
    outs = []
    for devices in (1, 2):
        trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, epochs=1,
                                 mesh=mesh_lib.make_mesh(devices))
        assert trainer.vmap_width_for(2) == 1
        run = trainer.train(specs)
        outs.append(trainer.predict(run, setup.eval, np.arange(8)))
    assert outs[1].shape == (3, 8, 4)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_choose_num_replicas(setup):
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, mesh=mesh_lib.make_mesh(8))
    assert choose_num_replicas(trainer, num_jobs=100, requested=24) == 24  # 5 groups of 20 -> 24
    assert choose_num_replicas(trainer, num_jobs=3, requested=24) == 8
    auto = choose_num_replicas(trainer, num_jobs=1000, max_replicas=40)
    assert auto % 8 == 0 and 8 <= auto <= 40
    assert replica_bytes(trainer) > 0
    with pytest.raises(ValueError, match="bool mask"):
        ReplicaSpec(seed=0, keep=np.ones(3, np.int32))


def test_cnn_replica_predictions_on_8_devices_equal_per_replica_predict():
    """Replica evaluation of a CNN on an 8-device mesh == each replica's own predict_proba
    (GSPMD auto-partitioning of the vmapped conv once gave probabilities off by up to 0.99)."""
    cfg = tiny_config(**{"model.kind": "cnn", "model.embed_dim": 16, "model.filters": 8,
                         "model.kernel_sizes": (3, 1), "model.dropout_rate": 0.0, "train.epochs": 1})
    cnn = prepare_run(cfg, None)
    n = len(cnn.train)
    specs = [ReplicaSpec(seed=s, keep=np.ones(n, bool)) for s in range(8)]
    trainer = ReplicaTrainer(cnn.cfg, cnn.model, cnn.train, epochs=1, mesh=mesh_lib.make_mesh(8))
    run = trainer.train(specs)
    got = trainer.predict(run, cnn.eval, np.arange(16))
    for r in (0, 5):
        params = jax.tree.map(lambda x: np.asarray(x)[r], run.params)
        ref = predict_proba(cnn.model, params, cnn.eval, 16, mesh_lib.make_mesh(1))[:16]
        np.testing.assert_allclose(got[r], ref, rtol=1e-5, atol=1e-6)
