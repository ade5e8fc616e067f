"""Cancellation ratio and gradient cosine similarity (docs/method.md "Analyses", paper sec. 3.1–3.3).

A bag-of-embeddings classifier with hand-set parameters gives closed-form
gradients (∂ℓ/∂b = p − y, ∂ℓ/∂K = a (p − y)ᵀ), so C(W), G(W)_c, ΔW_c and the
cosines are checked against numbers computed by hand; a tiny CNN is checked
against a brute-force reference (full jax.grad per example, explicit pair loop);
the CLI runs on a tiny trained run.
"""
from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tracin_jax.analysis import cancellation as canc
from tracin_jax.data import EncodedDataset
from tracin_jax.models import ModelOutput, build_model, init_params


class _Words(nn.Module):
    vocab: int
    dim: int

    def setup(self):
        self.word_embeddings = nn.Embed(self.vocab, self.dim)

    def __call__(self, ids):
        return self.word_embeddings(ids)


class BagModel(nn.Module):
    """logits = (Σ_{non-pad i} E[x_i]) K + b."""

    vocab: int = 4
    dim: int = 2
    labels: int = 2

    def setup(self):
        self.embeddings = _Words(self.vocab, self.dim)
        self.classifier = nn.Dense(self.labels)

    def embed_words(self, ids):
        return self.embeddings(ids)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None,
                 inputs_embeds=None, deterministic=True):
        e = self.embed_words(input_ids) if inputs_embeds is None else inputs_embeds
        a = jnp.sum(e * attention_mask[..., None], axis=1)
        return ModelOutput(self.classifier(a), a)


def _encoded(ids, mask, labels) -> EncodedDataset:
    ids = np.asarray(ids, np.int32)
    return EncodedDataset(input_ids=ids, attention_mask=np.asarray(mask, np.int32),
                          token_type_ids=np.zeros_like(ids), labels=np.asarray(labels, np.int32),
                          ids=np.arange(len(ids), dtype=np.int64), pad_id=0)


def _hand_params(kernel, bias):
    table = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)  # rows 1, 2, 3 = a(x) below
    return {"embeddings": {"word_embeddings": {"embedding": table}},
            "classifier": {"kernel": np.asarray(kernel, np.float32), "bias": np.asarray(bias, np.float32)}}


# Three one-token examples: a = (1,0), (0,1), (1,1); labels 0, 1, 0.
HAND_DATA = _encoded([[1, 0], [2, 0], [3, 0]], [[1, 0], [1, 0], [1, 0]], [0, 1, 0])
HAND_CKPTS = {1: _hand_params(np.zeros((2, 2)), [0.0, 0.0]),
              2: _hand_params(np.zeros((2, 2)), [0.1, -0.1]),
              3: _hand_params(0.3 * np.eye(2), [0.1, -0.1])}
HAND_LRS = [(1, 0.5), (2, 0.25), (3, 0.1)]


def _hand_report(population=None):
    return canc.analyze_checkpoints(BagModel(), HAND_CKPTS.__getitem__, HAND_LRS, HAND_DATA,
                                    np.arange(3), population=population)


def test_hand_computed_cancellation_ratio():
    report = _hand_report()
    r2 = math.sqrt(2.0)
    # Checkpoint 1: logits 0, p = (1/2, 1/2), |p - y| = 1/√2 per coordinate pair.
    # Checkpoint 2: logits (0.1, -0.1), p0 = σ(0.2).
    p0 = 1.0 / (1.0 + math.exp(-0.2))
    gap0, gap1 = 1.0 - p0, p0  # |p_0 - y_0| for y = 0 and for y = 1
    norms_a = [1.0, 1.0, r2]
    bias_sums = [3 / r2, r2 * (gap0 + gap1 + gap0)]
    kernel_sums = [sum(n / r2 for n in norms_a), r2 * (gap0 * norms_a[0] + gap1 * norms_a[1] + gap0 * norms_a[2])]
    bias, kernel, table = (report.view(n) for n in ("classifier/bias", "classifier/weight",
                                                    "word_embedding/weight"))
    np.testing.assert_allclose(bias.grad_norm_sums, bias_sums, rtol=1e-5)
    np.testing.assert_allclose(kernel.grad_norm_sums, kernel_sums, rtol=1e-5)
    np.testing.assert_allclose(bias.G, [0.5 * bias_sums[0], 0.25 * bias_sums[1]], rtol=1e-5)
    np.testing.assert_allclose(bias.delta, [0.1 * r2, 0.0], atol=1e-6)
    np.testing.assert_allclose(kernel.delta, [0.0, 0.3 * r2], atol=1e-6)
    assert bias.cancellation == pytest.approx((0.5 * bias_sums[0] + 0.25 * bias_sums[1]) / (0.1 * r2), rel=1e-5)
    assert kernel.cancellation == pytest.approx((0.5 * kernel_sums[0] + 0.25 * kernel_sums[1]) / (0.3 * r2), rel=1e-5)
    # K = 0 at checkpoints 1 and 2: no gradient reaches E, and E never moves.
    assert table.grad_norm_sums == [0.0, 0.0] and table.delta == [0.0, 0.0]
    assert math.isnan(table.cancellation)
    # The aggregates: all/weight leaves out the word embedding (paper sec. 3.2).
    assert report.view(canc.ALL_WEIGHTS).cancellation == pytest.approx(kernel.cancellation, rel=1e-6)
    assert report.view(canc.ALL_BIASES).cancellation == pytest.approx(bias.cancellation, rel=1e-6)


def test_hand_computed_cosines_and_population_scale():
    report = _hand_report(population=6)
    bias, kernel = report.view("classifier/bias"), report.view("classifier/weight")
    # ∂ℓ/∂b ∝ ±(−1, 1): pairs (1,2) −1, (1,3) +1, (2,3) −1.
    np.testing.assert_allclose(bias.cosine, [-1 / 3] * 3, atol=1e-6)
    # cos(a_a (p−y)_aᵀ, a_b (p−y)_bᵀ) = cos(a_a, a_b)·cos(pmy_a, pmy_b): 0, +1/√2, −1/√2.
    np.testing.assert_allclose(kernel.cosine, [0.0] * 3, atol=1e-6)
    # At checkpoint 3 (K = 0.3 I) each example's table gradient lives in its own row: cos 0.
    assert report.view("word_embedding/weight").cosine[-1] == pytest.approx(0.0, abs=1e-7)
    base = _hand_report()
    assert report.scale == 2.0
    assert bias.cancellation == pytest.approx(2 * base.view("classifier/bias").cancellation, rel=1e-6)
    assert bias.grad_norm_sums == pytest.approx(base.view("classifier/bias").grad_norm_sums)


def test_pure_functions_and_errors():
    assert canc.cancellation_ratio([2.0, 4.0], [0.5, 0.25], [1.0, 1.0]) == pytest.approx(1.0)
    assert canc.cancellation_ratio([1.0], [1.0], [0.0]) == math.inf
    with pytest.raises(ValueError, match="three"):
        canc.cancellation_ratio([1.0, 2.0], [1.0], [1.0])
    u = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # pairs: 0, 1, 0 -> mean over 3 unordered pairs = 1/3
    assert canc.mean_pairwise_cosine(u.sum(0), 3.0, 3) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        canc.mean_pairwise_cosine(u[0], 1.0, 1)
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        canc.analyze_checkpoints(BagModel(), HAND_CKPTS.__getitem__, HAND_LRS[:1], HAND_DATA, np.arange(3))
    with pytest.raises(ValueError, match="unknown parameter groups"):
        canc.parameter_views(HAND_CKPTS[1], groups=["layer_7"])


def test_cnn_matches_brute_force():
    """Every view of a tiny CNN against full per-example jax.grad and an explicit pair loop."""
    cfg = dict(kind="cnn", vocab_size=30, embed_dim=6, filters=5, kernel_sizes=(3, 1), num_labels=3,
               dropout_rate=0.0)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    n, length = 7, 8
    ids = rng.integers(1, 30, size=(n, length))
    mask = (np.arange(length)[None] < rng.integers(3, length + 1, size=(n, 1))).astype(np.int32)
    data = _encoded(ids * mask, mask, rng.integers(0, 3, size=n))
    ckpts = {s: jax.device_get(init_params(model, jax.random.key(s), length)) for s in (5, 9)}
    ckpts[9] = jax.tree_util.tree_map_with_path(  # biases start at 0: move them too
        lambda path, x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype)
        if path[-1].key == "bias" else x, ckpts[9])
    lrs = [(5, 0.3), (9, 0.1)]
    rows = np.array([0, 2, 3, 5, 6])
    report = canc.analyze_checkpoints(model, ckpts.__getitem__, lrs, data, rows, population=n,
                                      rows_per_call=2, chunk_size=3)

    def loss(p, i):
        out = model.apply({"params": p}, data.input_ids[i:i + 1], data.attention_mask[i:i + 1])
        return -jax.nn.log_softmax(out.logits[0])[data.labels[i]]

    flat = {s: canc._flat(ckpts[s]) for s in ckpts}
    grads = {s: [canc._flat(jax.grad(loss)(ckpts[s], int(i))) for i in rows] for s in ckpts}
    for view in canc.parameter_views(ckpts[5]):
        got = report.view(view.name)
        vec = {s: [np.concatenate([np.ravel(g[p]) for p in view.paths]).astype(np.float64)
                   for g in grads[s]] for s in ckpts}
        sums = sum(np.linalg.norm(v) for v in vec[5])
        np.testing.assert_allclose(got.grad_norm_sums, [sums], rtol=1e-4)
        delta = np.sqrt(sum(np.sum((np.asarray(flat[9][p], np.float64) - flat[5][p]) ** 2) for p in view.paths))
        np.testing.assert_allclose(got.delta, [delta], rtol=1e-5)
        np.testing.assert_allclose(got.cancellation, n / len(rows) * 0.3 * sums / delta, rtol=1e-4)
        for c, s in enumerate((5, 9)):
            cos = [np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
                   for i, a in enumerate(vec[s]) for j, b in enumerate(vec[s]) if i != j]
            np.testing.assert_allclose(got.cosine[c], np.mean(cos), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tracin_jax import config as config_lib
    from tracin_jax.train import train
    cfg = config_lib.base_config()
    cfg.data.source = "synthetic"
    cfg.data.synthetic.num_train = 120
    cfg.data.synthetic.num_eval = 40
    cfg.data.synthetic.num_triggers = 2
    cfg.data.synthetic.trigger_train_examples = 5
    cfg.data.synthetic.trigger_eval_examples = 2
    cfg.tokenizer.max_length = 16
    cfg.model.kind = "cnn"
    cfg.model.embed_dim = 8
    cfg.model.filters = 8
    cfg.model.kernel_sizes = (3, 1)
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 1e-2
    cfg.train.epochs = 2
    cfg.train.batch_size = 16
    cfg.train.checkpoint_every_epochs = 0
    cfg.train.checkpoint_steps = (4, 8)
    cfg.train.num_devices = 1
    run = tmp_path_factory.mktemp("run")
    train(cfg, run, progress=False)
    return run


def test_cli_writes_table_json_and_plot(tiny_run, tmp_path, capsys):
    from tracin_jax.cli import main
    out = tmp_path / "canc"
    assert main(["analyze", "cancellation", "--run", str(tiny_run), "--num-examples", "24",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = json.loads((out / "cancellation.json").read_text())
    assert data["steps"] == [4, 8, 16] and data["num_examples"] == 24 and data["population"] == 120
    names = [v["name"] for v in data["views"]]
    assert names[:2] == ["word_embedding/weight", "conv_0/weight"] and "all/bias" in names
    for v in data["views"]:
        assert len(v["G"]) == 2 and len(v["delta"]) == 2 and len(v["cosine"]) == 3
        assert v["cancellation"] > 0
    table = (out / "cancellation.md").read_text()
    assert "| conv_0/bias |" in table and "C(W)" in table
    assert (out / "cancellation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["all/bias"] == pytest.approx(data["views"][names.index("all/bias")]["cancellation"])
