"""A peer agrees: Captum's TracInCP on the word-embedding table (dense V×d gradients) and
TracInCPFast on the classifier give the scores of this project's tracin_we and tracin_last,
on two briefly trained Hugging Face checkpoints imported with ``import_hf`` (the setup and
code of tools/bench_peers.py, tiny)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("captum")

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_peers.py"
LRS = (0.05, 0.02)


def _tool():
    spec = importlib.util.spec_from_file_location("bench_peers", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_captum_tracincp_equals_tracin_we_and_last(tmp_path):
    peers = _tool()
    rng = np.random.default_rng(0)
    train = peers.make_examples(rng, 6, 12, 60, 2, 4)
    test = peers.make_examples(rng, 3, 12, 60, 2, 4)
    assert (train["input_ids"][:, 0] == peers.CLS_SEP_SMALL[0]).all()
    dirs = peers.make_checkpoints(tmp_path / "hf", vocab=60, hidden=16, layers=2, heads=2, intermediate=32,
                                  seq=12, num_labels=2, train=train, lrs=LRS, steps=2, batch=4)
    assert [d.name for d in dirs] == ["checkpoint-2", "checkpoint-4"]
    peers.write_jsonl(tmp_path / "train.jsonl", train)
    peers.write_jsonl(tmp_path / "test.jsonl", test)

    captum = peers.CaptumSide(dirs, LRS, train, test, batch=4)
    captum_we, captum_last = captum.tracin_we(), captum.tracin_last()
    ours, _ = peers.ours_once(dirs, LRS, tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path / "ours",
                              seq=12, dtype="float32")

    assert captum_we.shape == ours["we"].shape == (3, 6)
    assert np.abs(captum_we).max() > 0
    assert peers.max_rel_diff(ours["we"], captum_we) <= 2e-4
    # Captum's TracInCPFast leaves the classifier bias out, as tracin_last does.
    assert peers.max_rel_diff(ours["last"], captum_last) <= 2e-4


def test_oom_estimate_formula():
    peers = _tool()
    est = peers.oom_estimate(30522, 128, 2, 100, 32, None)
    g = 4 * 30522 * 128
    assert est["bytes_per_example_gradient"] == g
    assert est["predicted_bytes_without_base"] == g * max(3 * 100, 2 * 100 + 64)
    m = est["max_test_per_call_this_model"]
    assert 3 * m * g <= peers.MEMORY_BUDGET < 3 * (m + 1) * g
