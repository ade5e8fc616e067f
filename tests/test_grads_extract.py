"""Gradient extraction into the store: kill-and-restart gives an identical store; CLI."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tracin_jax import cli
from tracin_jax.stages.gradients import run_gradients, split_examples
from tracin_jax.store import GradientStore, GradientStoreWriter
from tracin_jax.train import train

from test_train import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(tiny_config(**{"train.epochs": 2}), path, progress=False)
    return path


def _digests(store_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(store_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store_dir.rglob("shard_*.json"))}


def test_killed_extraction_restarts_to_identical_store(run_dir, tmp_path, monkeypatch):
    full = run_gradients(run_dir, "train", tmp_path / "full", shard_size=64, progress=False)
    assert full.num_examples == 256 and [c.step for c in full.checkpoints] == [16, 32]

    real_write = GradientStoreWriter.write_shard
    calls = {"n": 0}

    def dying_write(self, step, shard, records):
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return real_write(self, step, shard, records)

    monkeypatch.setattr(GradientStoreWriter, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_gradients(run_dir, "train", tmp_path / "killed", shard_size=64, progress=False)
    monkeypatch.setattr(GradientStoreWriter, "write_shard", real_write)
    written = []
    monkeypatch.setattr(GradientStoreWriter, "write_shard",
                        lambda self, step, shard, rec: (written.append((step, shard)),
                                                        real_write(self, step, shard, rec))[1])
    run_gradients(run_dir, "train", tmp_path / "killed", shard_size=64, progress=False)
    assert len(written) == 8 - 5  # complete shards were skipped
    assert _digests(tmp_path / "full") == _digests(tmp_path / "killed")
    assert len(_digests(tmp_path / "full")) == 8


def test_store_records_match_the_run(run_dir, tmp_path):
    store = run_gradients(run_dir, "test", tmp_path / "test", k=5, progress=False)
    from tracin_jax.train import load_run
    setup = load_run(run_dir)
    ex = split_examples(setup, "test")
    rec = store.load(store.checkpoints[-1].step)
    np.testing.assert_array_equal(rec["example_id"], ex.encoded.ids)
    np.testing.assert_array_equal(rec["label"], ex.encoded.labels)
    assert rec["token_ids"].shape[1] == 5 and store.manifest["k"] == 5
    # every kept token id occurs in its example
    for row in range(len(rec["token_ids"])):
        kept = rec["token_ids"][row][rec["token_ids"][row] >= 0]
        assert set(kept.tolist()) <= set(ex.encoded.input_ids[row].tolist())
    # per-class balance of the test points
    counts = np.bincount(ex.encoded.labels, minlength=4)
    assert (counts == setup.cfg.test_points.per_class).all()


def test_reopening_store_with_other_k_is_refused(run_dir, tmp_path):
    run_gradients(run_dir, "test", tmp_path / "s", k=5, progress=False)
    with pytest.raises(ValueError, match="k"):
        run_gradients(run_dir, "test", tmp_path / "s", k=3, progress=False)


def test_cli_grads(run_dir, tmp_path, capsys):
    rc = cli.main(["grads", "--run", str(run_dir), "--split", "test", "--checkpoints", "32",
                   "--k", "0", "--out", str(tmp_path / "g"), "--no-progress"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["checkpoints"] == [{"step": 32, "learning_rate": pytest.approx(3e-3)}]
    store = GradientStore(tmp_path / "g")
    assert store.manifest["k"] is None
    assert cli.main(["grads", "--run", str(run_dir), "--checkpoints", "7", "--out", str(tmp_path / "h"),
                     "--no-progress"]) == 2  # a usage error
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "checkpoints [7] not found" in err[-1]
    assert not any(line.startswith(("Traceback", "error:")) for line in err[:-1])


def test_cli_grads_param_groups_same_pass(run_dir, tmp_path, capsys):
    """--param-groups stores per-example group gradients; for the classifier they are
    known in closed form: d loss / d kernel = a(x) (p - y)^T, d loss / d bias = p - y."""
    rc = cli.main(["grads", "--run", str(run_dir), "--split", "test", "--checkpoints", "32",
                   "--k", "3", "--param-groups", "classifier", "--include-bias",
                   "--out", str(tmp_path / "g"), "--no-progress"])
    assert rc == 0
    store = GradientStore(tmp_path / "g")
    assert store.manifest["model_info"]["param_paths"] == ["classifier/bias", "classifier/kernel"]
    rec = store.load(32)
    a, pmy = rec["features"], rec["p_minus_y"]
    assert rec["param_grads"].shape == (len(a), pmy.shape[1] * (1 + a.shape[1]))
    np.testing.assert_allclose(rec["param_grads"][:, :pmy.shape[1]], pmy, rtol=1e-5, atol=1e-7)
    kernel = np.einsum("bh,bc->bhc", a, pmy).reshape(len(a), -1)
    np.testing.assert_allclose(rec["param_grads"][:, pmy.shape[1]:], kernel, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["bert", "cnn"])
@pytest.mark.parametrize("k", [None, 3])
def test_trimmed_batches_give_the_untrimmed_records(kind, k, monkeypatch):
    """grads.pad_to_multiple: a shard computed longest text first in batches cut to their
    longest text (rounded up) gives the full-width records, in dataset order, widths padded
    back (token slots -1, vectors and norms 0)."""
    import jax

    from tracin_jax import mesh as mesh_lib
    from tracin_jax.data.tokenize import EncodedDataset
    from tracin_jax.grads.embedding_grads import make_gradient_fn
    from tracin_jax.grads.extract import compute_records, trim_multiple
    from tracin_jax.models import BertClassifier, BertConfig, CNNClassifier, CNNConfig, init_params

    L, V = 24, 50
    if kind == "bert":
        model = BertClassifier(BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=32, max_position_embeddings=32, num_labels=3))
    else:
        model = CNNClassifier(CNNConfig(vocab_size=V, embed_dim=16, filters=8, kernel_sizes=(3, 1), num_labels=3))
    params = init_params(model, jax.random.key(0), L)
    rng = np.random.default_rng(0)
    n = 37
    lengths = rng.integers(2, L + 1, n)
    lengths[5] = L
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask, rng.integers(1, V, (n, L)), 0).astype(np.int32)
    enc = EncodedDataset(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
                         labels=rng.integers(0, 3, n).astype(np.int32), ids=np.arange(100, 100 + n))
    mesh = mesh_lib.make_local_mesh()
    grad_fn = make_gradient_fn(model, mesh, k=k)
    widths = []
    real_shard = mesh_lib.shard_batch
    monkeypatch.setattr(mesh_lib, "shard_batch", lambda b, m: (widths.append(b["input_ids"].shape[1]),
                                                                real_shard(b, m))[1])
    rows = np.arange(n)
    full = compute_records(grad_fn, params, enc, rows, 8, mesh, k=k, pad_to_multiple=0)
    assert set(widths) == {L}
    widths.clear()
    trimmed = compute_records(grad_fn, params, enc, rows, 8, mesh, k=k, pad_to_multiple=8)
    assert sorted(set(widths)) != [L] and min(widths) < L  # batches were cut
    assert trimmed.keys() == full.keys()
    np.testing.assert_array_equal(trimmed["example_id"], enc.ids)
    np.testing.assert_array_equal(trimmed["token_ids"], full["token_ids"])
    for key in full:
        assert trimmed[key].shape == full[key].shape, key
        np.testing.assert_allclose(trimmed[key], full[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert np.abs(full["vectors"]).max() > 0
    # left-padded rows cannot be trimmed: full-width batches, the same records
    left = EncodedDataset(input_ids=np.ascontiguousarray(ids[:, ::-1]), attention_mask=np.ascontiguousarray(mask[:, ::-1]),
                          token_type_ids=np.zeros_like(ids), labels=enc.labels, ids=enc.ids)
    widths.clear()
    untrimmed = compute_records(grad_fn, params, left, rows, 8, mesh, k=k, pad_to_multiple=8)
    assert set(widths) == {L}
    np.testing.assert_array_equal(untrimmed["token_ids"],
                                  compute_records(grad_fn, params, left, rows, 8, mesh, k=k)["token_ids"])
    assert trim_multiple(None, 128) == 32 and trim_multiple(None, 24) == 8 and trim_multiple(0, 64) == 0


def test_gradient_programs_are_kept_per_model_and_options():
    """programs.PROGRAMS keeps one gradient program per (model, mesh, options): equal models
    (same configuration) share it; other options get their own."""
    from tracin_jax import mesh as mesh_lib
    from tracin_jax.grads.embedding_grads import make_gradient_fn
    from tracin_jax.models import BertClassifier, BertConfig

    def model():
        return BertClassifier(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=16, max_position_embeddings=16, num_labels=2))

    mesh = mesh_lib.make_local_mesh()
    first = make_gradient_fn(model(), mesh, k=3)
    assert make_gradient_fn(model(), mesh, k=3) is first
    assert make_gradient_fn(model(), mesh, k=4) is not first
    assert make_gradient_fn(model(), mesh, k=3, mode="sum") is not first
