"""The bad-input corpus: every stage refuses poisoned, mismatched or malformed input with one
line ``error: <what>; <what to do>`` and a non-zero exit, and writes or changes nothing.

Each case is what a user (or an adversary) actually did; README "What is checked" lists them.
More cases live beside the code they check: tests/test_train_integrity.py (checkpoint bits,
truncation, locks), tests/test_deletion_runner.py (sweep workers, bad result files),
tests/test_store.py (corrupt/missing shards), tests/test_data_sources.py (files, labels).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tracin_jax import cli
from tracin_jax.errors import DataError

REPO = Path(__file__).resolve().parent.parent
TINY = ["--config.data.synthetic.num_train=96", "--config.data.synthetic.num_eval=40",
        "--config.data.synthetic.num_triggers=2", "--config.data.synthetic.trigger_train_examples=4",
        "--config.data.synthetic.trigger_opponent_examples=0",
        "--config.data.synthetic.trigger_eval_examples=2", "--config.tokenizer.max_length=12",
        "--config.model.hidden_size=8", "--config.model.num_hidden_layers=1",
        "--config.model.num_attention_heads=1", "--config.model.intermediate_size=16",
        "--config.model.max_position_embeddings=16", "--config.train.batch_size=16",
        "--config.train.epochs=2", "--config.test_points.per_class=1", "--config.train.num_devices=1",
        "--config.grads.shard_size=32"]


def _fails(capsys, argv, code, pattern):
    """Runs the CLI; asserts the exit code and one error line matching ``pattern``."""
    assert cli.main(argv) == code, capsys.readouterr().err[-2000:]
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err) and not any(line.startswith("error:") for line in err[:-1])
    assert pattern.lower() in err[-1].lower(), err[-1]
    return err[-1]


def _snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*")) if p.is_file()} \
        if path.exists() else {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs (seeds 0 and 1) and their gradient stores, made through the CLI."""
    root = tmp_path_factory.mktemp("bad")
    for seed in (0, 1):
        run = root / f"run{seed}"
        assert cli.main(["train", "--config", "demo", "--workdir", str(run), "--no-progress",
                         f"--config.seed={seed}", *TINY]) == 0
        for split in ("train", "test"):
            assert cli.main(["grads", "--run", str(run), "--split", split, "--out", str(root / f"g{seed}_{split}"),
                             "--no-progress"]) == 0
    return root


def test_diverging_training_stops_without_a_checkpoint(tmp_path, capsys):
    work = tmp_path / "nan"
    _fails(capsys, ["train", "--config", "demo", "--workdir", str(work), "--no-progress", *TINY,
                    "--config.train.lr=1e6"], 1, "training diverged")
    assert not list((work / "checkpoints").glob("[0-9]*"))


def test_unknown_config_key_and_bad_values(tmp_path, capsys):
    _fails(capsys, ["train", "--config", "demo", "--workdir", str(tmp_path / "a"), "--config.train.lrr=1"],
           2, "unknown config key 'train.lrr'")
    _fails(capsys, ["train", "--config", "demo", "--workdir", str(tmp_path / "b"), "--config.train.epochs=1.5"],
           2, "train.epochs=1.5")
    _fails(capsys, ["train", "--config", "demo", "--workdir", str(tmp_path / "c"), "--config.train.epochs=-1"],
           2, "nothing to train")
    _fails(capsys, ["train", "--config", "no_such_config"], 2, "config 'no_such_config' not found")
    assert not any((tmp_path / n).exists() and list((tmp_path / n).rglob("checkpoints/*")) for n in "abc")


def test_stray_label_header_only_and_non_utf8_files(tmp_path, capsys):
    base = ["train", "--config", "demo", "--no-progress", *TINY, "--config.data.source=files"]
    good = tmp_path / "good.csv"
    good.write_text("text,label\n" + "".join(f"word{i} other,{i % 2}\n" for i in range(40)))
    stray = tmp_path / "stray.csv"
    stray.write_text(good.read_text() + "a late row,7\n")
    _fails(capsys, base + ["--workdir", str(tmp_path / "r1"), f"--config.data.files.train={stray}",
                           f"--config.data.files.eval={good}"], 1, "leave classes 2..6 without examples")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    _fails(capsys, base + ["--workdir", str(tmp_path / "r2"), f"--config.data.files.train={empty}",
                           f"--config.data.files.eval={good}"], 1, "empty.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text,label\ncaf\xe9 ok,0\nnice,1\n")
    line = _fails(capsys, base + ["--workdir", str(tmp_path / "r3"), f"--config.data.files.train={latin}",
                                  f"--config.data.files.eval={good}"], 1, "byte offset")
    assert "latin.csv" in line and "data.encoding" in line


def test_cross_run_stores_are_refused_unless_asked(runs, tmp_path, capsys):
    """A test store of another seed's run against this run's train store: plausible scores,
    meaningless — refused, naming both stores; --allow-mismatch for a deliberate study."""
    args = ["score", "--method", "tracin_last", "--test", str(runs / "g1_test"), "--train",
            str(runs / "g0_train"), "--out", str(tmp_path / "s"), "--no-progress"]
    _fails(capsys, args, 1, "different parameters at checkpoint")
    assert not (tmp_path / "s").exists()
    assert cli.main(args + ["--allow-mismatch"]) == 0


def test_score_refuses_non_finite_and_mismatched_inputs(runs, tmp_path, capsys):
    _fails(capsys, ["score", "--method", "tracin_we", "--test", str(runs / "g0_test"), "--train",
                    str(runs / "g0_train"), "--out", str(tmp_path / "k"), "--no-progress"], 1, "k=10")
    _fails(capsys, ["score", "--method", "tracin_last", "--test", str(runs / "g0_test"), "--train",
                    str(runs / "g0_train"), "--part", "3", "--out", str(tmp_path / "p")], 2, "I/N")


def test_outputs_are_not_clobbered(runs, tmp_path, capsys):
    out = tmp_path / "scores"
    base = ["score", "--test", str(runs / "g0_test"), "--train", str(runs / "g0_train"), "--out", str(out),
            "--no-progress", "--top", "5"]
    assert cli.main(base + ["--method", "tracin_last"]) == 0
    before = _snapshot(out)
    _fails(capsys, base + ["--method", "representer"], 1, "already holds scores made with other arguments")
    assert _snapshot(out) == before
    assert cli.main(base + ["--method", "tracin_last"]) == 0  # the same command again: its own results
    assert cli.main(base + ["--method", "representer", "--overwrite"]) == 0
    # grads into a store of other checkpoints
    store = tmp_path / "g"
    run = runs / "run0"
    steps = [int(p.name) for p in sorted((run / "checkpoints").iterdir()) if p.name.isdigit()]
    assert cli.main(["grads", "--run", str(run), "--split", "test", "--out", str(store), "--no-progress"]) == 0
    before = _snapshot(store)
    _fails(capsys, ["grads", "--run", str(run), "--split", "test", "--checkpoints", str(steps[0]), "--out",
                    str(store), "--no-progress"], 1, "already holds a store of checkpoints")
    assert _snapshot(store) == before


def test_corrupt_and_missing_shards(runs, tmp_path, capsys):
    import shutil
    store = tmp_path / "store"
    shutil.copytree(runs / "g0_train", store)
    victim = sorted(store.rglob("vectors.npy"))[0]
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x10
    victim.write_bytes(bytes(data))
    args = ["score", "--method", "tracin_we_topk", "--test", str(runs / "g0_test"), "--train", str(store),
            "--out", str(tmp_path / "s"), "--no-progress"]
    line = _fails(capsys, args, 1, "sha256")
    assert victim.name in line and "re-run" in line
    victim.unlink()
    _fails(capsys, args, 1, "missing")


def test_flipped_checkpoint_bit_stops_gradient_extraction(runs, tmp_path, capsys):
    """One value of the saved parameters changes on disk (0.0187 -> -116.8 in the user's case):
    the parameters are rewritten in place through orbax, the recorded digests are not."""
    import shutil
    import orbax.checkpoint as ocp
    from tracin_jax.train import CheckpointStore
    run = tmp_path / "run"
    shutil.copytree(runs / "run0", run)
    store = CheckpointStore(run / "checkpoints")
    step = store.latest_step()
    params = store.restore_params(step)
    store.close()
    params["embeddings"]["word_embeddings"]["embedding"][5, 3] = -116.8
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "params_new", params)
    checkpointer.wait_until_finished()
    target = run / "checkpoints" / str(step) / "params"
    shutil.rmtree(target)
    shutil.move(str(tmp_path / "params_new"), target)
    _fails(capsys, ["grads", "--run", str(run), "--split", "test", "--out", str(tmp_path / "g"),
                    "--no-progress"], 1, "does not match")
    assert not (tmp_path / "g").exists() or not list((tmp_path / "g").rglob("*.npy"))


def test_out_of_table_ids_at_every_public_entry(runs):
    """Ids < 0 or >= the table size are refused by every function that takes token ids (host
    check naming id and row); inside jit an out-of-table id gives NaN, never another row."""
    import jax
    import tracin_jax
    from tracin_jax.grads import (extract_gradients, make_gradient_fn, make_single_device_gradient_fn,
                                  per_example_outputs)
    from tracin_jax.mesh import make_local_mesh, shard_batch
    from tracin_jax.models import get_word_embedding_table
    from tracin_jax.train import CheckpointStore, load_run
    setup = load_run(runs / "run0")
    store = CheckpointStore(runs / "run0" / "checkpoints")
    params = store.restore_params(store.latest_step())
    store.close()
    vocab = int(get_word_embedding_table(params).shape[0])
    model = setup.model
    for bad_id in (vocab + 1000, -5):
        ids = np.array(setup.eval.input_ids[:8])
        ids[3, 2] = bad_id
        mask, types = np.asarray(setup.eval.attention_mask[:8]), np.zeros_like(ids)
        labels = np.asarray(setup.eval.labels[:8])
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}
        match = f"token id {bad_id} at row 3, position 2"
        with pytest.raises(DataError, match=match):
            model.apply({"params": params}, ids, mask, types, deterministic=True)
        with pytest.raises(DataError, match=match):
            model.apply({"params": params}, ids, method="embed_words")
        with pytest.raises(DataError, match=match):
            per_example_outputs(model, params, ids, mask, types, labels)
        with pytest.raises(DataError, match=match):
            make_single_device_gradient_fn(model)(params, batch)
        mesh = make_local_mesh()
        with pytest.raises(DataError, match=match):
            make_gradient_fn(model, mesh)(params, shard_batch(batch, mesh))
        with pytest.raises(DataError, match=f"token id {bad_id}"):
            extract_gradients(model, [(1, 0.1)], lambda s: params, setup.eval.subset(np.arange(8)).__class__(
                **{**setup.eval.subset(np.arange(8)).__dict__, "input_ids": ids}), runs / "never",
                fingerprint="x", split="x", model_info={}, vocab_size=vocab, progress=False)
        with pytest.raises(DataError, match="token id"):
            tracin_jax.influence("tracin_we", model, [(params, 0.1)], batch, batch)
        # inside jit: NaN logits, not a plausible number
        logits = jax.jit(lambda p, i: model.apply({"params": p}, i, mask, types, deterministic=True)[0])(params, ids)
        assert np.isnan(np.asarray(logits)[3]).all() and np.isfinite(np.asarray(logits)[[0, 1, 2]]).all()
    assert not (runs / "never").exists()


def test_two_trainers_in_one_workdir(tmp_path, capsys):
    """The second gets one line naming the holder; the lock goes with the first process."""
    work = tmp_path / "w"
    work.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tracin_jax.train import WorkdirLock; "
        f"l = WorkdirLock({str(work)!r}); l.acquire(); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _fails(capsys, ["train", "--config", "demo", "--workdir", str(work), "--no-progress", *TINY], 1,
               "is in use by pid")
    finally:
        holder.kill()
        holder.wait()
