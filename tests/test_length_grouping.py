"""Length-grouped batches and trimmed padding (train.group_by_length, train.pad_to_multiple).

Grouping is a new data order (megabatches sorted by length) that removal filters first;
trimming drops only all-padding columns, so models give the same outputs, and the
retraining engine reproduces ``train`` with both options on, dropout included.
"""

import itertools

import jax
import numpy as np
import pytest

from tracin_jax import config as config_lib
from tracin_jax import mesh as mesh_lib
from tracin_jax.data import (EncodedDataset, batch_order, batch_padded_length, iterate_batches,
                             num_batches, sequence_lengths)
from tracin_jax.deletion import replicas, schedule
from tracin_jax.deletion.replicas import ReplicaSpec, ReplicaTrainer, slot_plan
from tracin_jax.train import CheckpointStore, predict_proba, prepare_run, train

from test_deletion_replicas import tiny_config as replicas_tiny_config



def _encoded(lengths, max_length=12, left_padded=False):
    lengths = np.asarray(lengths)
    n = len(lengths)
    cols = np.arange(max_length)[None, :]
    mask = (cols < lengths[:, None]) if not left_padded else (cols >= max_length - lengths[:, None])
    ids = np.where(mask, 5 + np.arange(n)[:, None], 0)
    return EncodedDataset(input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
                          token_type_ids=np.zeros((n, max_length), np.int32),
                          labels=(np.arange(n) % 2).astype(np.int32), ids=np.arange(n, dtype=np.int64),
                          pad_id=0)


def test_batch_order_groups_megabatches_by_length():
    rng = np.random.default_rng(0)
    n, bs, g = 103, 4, 3
    lengths = rng.integers(1, 12, n)
    keep = rng.random(n) > 0.2
    plain = batch_order(n, seed=7, epoch=2, keep=keep)
    grouped = batch_order(n, seed=7, epoch=2, keep=keep, lengths=lengths, group_by_length=g,
                          batch_size=bs)
    mega = g * bs
    assert len(grouped) == len(plain) == keep.sum()
    for start in range(0, len(plain), mega):
        block, ref = grouped[start:start + mega], plain[start:start + mega]
        assert sorted(block.tolist()) == sorted(ref.tolist())  # the same examples per megabatch
        assert np.all(np.diff(lengths[block]) <= 0)  # longest first
        for value in np.unique(lengths[block]):  # ties keep the shuffled order (stable)
            assert [i for i in block if lengths[i] == value] == [i for i in ref if lengths[i] == value]
    assert not np.array_equal(grouped, plain)
    # group_by_length=0 is the old order, whatever lengths say
    np.testing.assert_array_equal(batch_order(n, seed=7, epoch=2, keep=keep, lengths=lengths), plain)
    with pytest.raises(ValueError, match="needs lengths"):
        batch_order(n, seed=7, group_by_length=2, batch_size=bs)
    with pytest.raises(ValueError, match="needs lengths"):
        batch_order(n, seed=7, group_by_length=2, batch_size=bs, lengths=lengths[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        batch_order(n, seed=7, group_by_length=-1, batch_size=bs, lengths=lengths)


def test_batch_padded_length():
    assert batch_padded_length(13, 8, 48) == 16
    assert batch_padded_length(16, 8, 48) == 16
    assert batch_padded_length(0, 8, 48) == 8
    assert batch_padded_length(47, 8, 48) == 48
    assert batch_padded_length(45, 16, 40) == 40  # never past max_length
    assert batch_padded_length(5, 0, 48) == 48  # off
    with pytest.raises(ValueError):
        batch_padded_length(5, -1, 48)


def test_iterate_batches_trims_only_padding_columns():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 12, 50)
    enc = _encoded(lengths)
    keep = rng.random(50) > 0.1
    full = list(iterate_batches(enc, 8, seed=3, epoch=1, keep=keep, group_by_length=2))
    trimmed = list(iterate_batches(enc, 8, seed=3, epoch=1, keep=keep, group_by_length=2,
                                   pad_to_multiple=4))
    assert len(full) == len(trimmed) == num_batches(int(keep.sum()), 8)
    widths = set()
    for a, b in zip(full, trimmed):
        real = b["weights"] > 0
        width = b["input_ids"].shape[1]
        widths.add(width)
        assert width == batch_padded_length(int(lengths[b["ids"][real]].max()), 4, 12)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(b[key], a[key][:, :width])
            assert not a["attention_mask"][:, width:].any()
        for key in ("labels", "ids", "weights"):
            np.testing.assert_array_equal(a[key], b[key])
    assert len(widths) >= 2  # grouping gives short and long batches
    with pytest.raises(ValueError, match="right-padded"):
        list(iterate_batches(_encoded(np.minimum(lengths, 6), left_padded=True), 8, pad_to_multiple=4))


def test_sequence_lengths():
    enc = _encoded([3, 1, 12, 7])
    np.testing.assert_array_equal(sequence_lengths(enc), [3, 1, 12, 7])


def tiny_config(model="bert", **overrides):
    """test_deletion_replicas' tiny run (dropout on), longer texts, both options on."""
    cfg = replicas_tiny_config(**{"tokenizer.max_length": 24, "train.group_by_length": 3,
                                  "train.pad_to_multiple": 4, **overrides})
    if model == "cnn":
        config_lib.use_cnn(cfg, vocab_size=2000, min_freq=1, embed_dim=16, filters=8,
                           kernel_sizes=(5, 5, 1), dropout_rate=0.0)
    return cfg


@pytest.mark.parametrize("model", ["bert", "cnn"])
def test_models_ignore_trimmed_padding(model):
    """Logits of a trimmed batch == the same batch padded to max_length."""
    setup = prepare_run(tiny_config(model), None)
    lengths = sequence_lengths(setup.train)
    assert lengths.min() < 12 and lengths.max() > 12  # the synthetic texts vary in length
    full = list(iterate_batches(setup.train, 16, seed=0, group_by_length=3))
    trimmed = list(iterate_batches(setup.train, 16, seed=0, group_by_length=3, pad_to_multiple=4))
    i = int(np.argmin([b["input_ids"].shape[1] for b in trimmed]))  # the shortest batch
    batch, short = full[i], trimmed[i]
    assert short["input_ids"].shape[1] < batch["input_ids"].shape[1]

    def logits(b):
        return np.asarray(setup.model.apply({"params": setup.params}, b["input_ids"], b["attention_mask"],
                                            b["token_type_ids"], deterministic=True).logits)
    np.testing.assert_allclose(logits(short), logits(batch), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def grouped_setup():
    return prepare_run(tiny_config(**{"train.group_by_length": 13}), None)  # an epoch a megabatch


def _single_run(setup, seed, keep, tmp_path):
    cfg = config_lib.from_json(config_lib.to_json(setup.cfg))
    cfg.seed = seed
    cfg.train.num_devices = 1
    result = train(cfg, tmp_path, keep=keep, progress=False)
    store = CheckpointStore(tmp_path / "checkpoints")
    params = store.restore_params(result.final_step)
    store.close()
    return result.final_step, params


def test_engine_equals_train_with_grouping_and_trimming(grouped_setup, tmp_path, monkeypatch):
    """One replica at a time (the CPU default): the same batches, lengths and dropout masks as
    ``train``; the trimmed calls are runs of one length (multi-step calls and single steps)."""
    setup = grouped_setup
    monkeypatch.setattr(schedule, "TRIMMED_CALL_STEPS", 3)  # 12-step epochs: runs of 4-5 steps
    rng = np.random.default_rng(0)
    keep = np.ones(len(setup.train), bool)
    keep[rng.choice(len(keep), 20, replace=False)] = False
    final_step, ref = _single_run(setup, 1, keep, tmp_path)
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, vmap_width=1)
    run = trainer.train([ReplicaSpec(seed=1, keep=keep), ReplicaSpec(seed=2, keep=np.ones(len(keep), bool))])
    assert run.steps[0] == final_step == 2 * num_batches(int(keep.sum()), 16)
    mine = jax.tree.map(lambda x: np.asarray(x)[0], run.params)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # the plan: several lengths, calls cover every active slot once, runs of one length
    spe = num_batches(int(keep.sum()), 16)
    idx, active = slot_plan([ReplicaSpec(seed=1, keep=keep)], 16, setup.cfg.train, 0, spe,
                            sequence_lengths(setup.train))
    widths = schedule.slot_widths(idx, active, trainer.lengths, trainer.pad_to_multiple, trainer.max_length)
    calls = schedule.plan_calls(active, widths, schedule.chunk_length(trainer.n, 16, 256, trimmed=True))
    assert [s for a, b, _ in calls for s in range(a, b)] == list(range(spe))
    assert len({length for *_, length in calls}) >= 2
    assert all(widths[s] == w for a, b, w in calls for s in range(a, b))  # one width a call
    runs = [len(list(g)) for _, g in itertools.groupby(widths)]  # runs of one width, at most 3 a call
    assert [b - a for a, b, _ in calls] == [min(3, r - i) for r in runs for i in range(0, r, 3)]
    assert max(length for *_, length in calls) <= 24


@pytest.mark.parametrize("model", ["bert", "cnn"])
def test_trimmed_replica_predictions_equal_predict_proba(model):
    """Evaluation is trimmed too (rows longest first, each batch cut, order restored):
    the probabilities of the untrimmed ``predict_proba``, row for row."""
    setup = prepare_run(tiny_config(model), None)
    params = setup.params
    if model == "bert":  # a fresh tiny BERT predicts nearly uniformly: sharpen its logits
        params = dict(params, classifier=jax.tree.map(lambda x: 1e3 * x, params["classifier"]))
    run = replicas.ReplicaRun(params=jax.tree.map(lambda x: np.asarray(x)[None], params),
                              steps=np.zeros(1, np.int64), train_loss=np.zeros(1, np.float32), num_replicas=1)
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train)
    rows = np.arange(len(setup.eval.labels))[::-1]
    probs = trainer.predict(run, setup.eval, rows, batch_size=8)[0]
    ref = predict_proba(setup.model, params, setup.eval, 16, mesh_lib.make_mesh(1))[rows]
    assert np.ptp(ref, axis=0).max() > 1e-3  # rows differ by far more than the tolerance
    np.testing.assert_allclose(probs, ref, rtol=1e-5, atol=1e-6)


def test_vmapped_engine_with_trimming_equals_train_without_dropout(tmp_path):
    """Replicas vmapped together share a step's length (the longest); without dropout the
    padded length cannot matter, so each still equals its own ``train`` run."""
    setup = prepare_run(tiny_config(**{"model.hidden_dropout_prob": 0.0,
                                       "model.attention_probs_dropout_prob": 0.0}), None)
    rng = np.random.default_rng(1)
    keeps = [np.ones(len(setup.train), bool) for _ in range(3)]
    for k in keeps[1:]:
        k[rng.choice(len(k), 30, replace=False)] = False
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, vmap_width=3)
    run = trainer.train([ReplicaSpec(seed=s, keep=k) for s, k in zip((0, 1, 2), keeps)])
    for r in (1, 2):
        final_step, ref = _single_run(setup, r, keeps[r], tmp_path / str(r))
        assert run.steps[r] == final_step
        mine = jax.tree.map(lambda x: np.asarray(x)[r], run.params)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_trimmed_training_matches_untrimmed_without_dropout(tmp_path):
    """Trimming changes no arithmetic that matters: the same run (no dropout) padded to
    max_length ends at the same parameters, up to float rounding."""
    base = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0}
    out = []
    for m in (4, 0):
        cfg = tiny_config(**base, **{"train.pad_to_multiple": m})
        cfg.train.num_devices = 1
        result = train(cfg, tmp_path / str(m), progress=False)
        store = CheckpointStore(tmp_path / str(m) / "checkpoints")
        out.append(store.restore_params(result.final_step))
        store.close()
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1]))]
    assert max(diffs) < 1e-4
    setup = prepare_run(tiny_config(**base), None)
    probs = predict_proba(setup.model, out[0], setup.eval, 16, mesh_lib.make_mesh(1))
    assert np.all(np.isfinite(probs))


def test_engine_refuses_left_padded_data(grouped_setup):
    setup = grouped_setup
    enc = setup.train
    mask = np.asarray(enc.attention_mask)[:, ::-1].copy()
    bad = EncodedDataset(input_ids=np.asarray(enc.input_ids), attention_mask=mask,
                         token_type_ids=np.asarray(enc.token_type_ids), labels=np.asarray(enc.labels),
                         ids=np.asarray(enc.ids), pad_id=enc.pad_id)
    with pytest.raises(ValueError, match="right-padded"):
        ReplicaTrainer(setup.cfg, setup.model, bad)
