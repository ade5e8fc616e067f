"""``tracin-jax self-influence`` on a planted-flip corpus: the flipped labels rank high (ROC-AUC
well above random), with the loss-only and random rows beside it; outputs parse."""
from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest

from tracin_jax import cli
from tracin_jax.stages.self_influence import detection_table


@pytest.fixture(scope="module")
def flipped_store(tmp_path_factory):
    from tracin_jax import config as config_lib
    from tracin_jax.stages.gradients import run_gradients
    from tracin_jax.train import prepare_run, train
    cfg = config_lib.base_config()
    cfg.data.source = "synthetic"
    s = cfg.data.synthetic
    s.num_train, s.num_eval, s.num_filler = 300, 40, 60
    s.num_triggers, s.trigger_train_examples, s.trigger_eval_examples = 1, 6, 1
    s.keywords_per_class, s.keyword_prob, s.max_length, s.flip_fraction = 2, 0.5, 12, 0.06
    cfg.tokenizer.max_length = 16
    cfg.model.kind = "cnn"
    cfg.model.embed_dim, cfg.model.filters, cfg.model.kernel_sizes = 16, 16, (3, 1)
    cfg.train.optimizer, cfg.train.lr, cfg.train.epochs, cfg.train.batch_size = "adamw", 1e-2, 3, 30
    cfg.train.checkpoint_every_epochs = 1
    cfg.train.num_devices = 1
    root = tmp_path_factory.mktemp("self")
    setup = prepare_run(cfg, root / "run")
    train(cfg, root / "run", setup=setup, progress=False)
    run_gradients(root / "run", "train", root / "store", k=0, setup=setup, progress=False)
    flipped = setup.extras["ground_truth"]["flipped_train_ids"]
    (root / "flipped.json").write_text(json.dumps([int(i) for i in flipped]))
    return root


def test_flipped_labels_rank_high_beside_loss_and_random(flipped_store, capsys):
    root = flipped_store
    out = root / "si"
    assert cli.main(["self-influence", "--method", "tracin_we", "--store", str(root / "store"), "--run",
                     str(root / "run"), "--flipped", str(root / "flipped.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "self_influence: ROC-AUC" in printed and "loss: ROC-AUC" in printed and "random: ROC-AUC 0.500" in printed
    summary = json.loads((out / "summary.json").read_text())
    d = summary["detection"]
    assert d["self_influence"]["auc"] > 0.8 > d["random"]["auc"]  # well above random
    assert d["self_influence"]["recall_at_20pct"] > 2 * d["random"]["recall_at_20pct"]
    rows = [json.loads(x) for x in (out / "self_influence.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
    assert sum(r["flipped"] for r in rows) == summary["flipped"]
    assert rows[0]["top_tokens"] and rows[0]["top_tokens"][0]["token"] != "#"  # decoded words

    class Cells(HTMLParser):
        rows = 0

        def handle_starttag(self, tag, attrs):
            self.rows += tag == "tr"
    parser = Cells()
    parser.feed((out / "report.html").read_text())
    assert parser.rows >= 200  # the top 200 and the detection table


def test_detection_table_against_closed_form():
    flipped = np.array([True, False, True, False, False, False, False, False, False, False])
    perfect = np.where(flipped, 10.0, 1.0) + np.arange(10) * 0.01
    table = detection_table(perfect, -perfect, flipped)
    assert table["self_influence"]["auc"] == 1.0 and table["loss"]["auc"] == 0.0
    assert table["self_influence"]["recall_at_20pct"] == 1.0 and table["random"]["recall_at_10pct"] == 0.1
    assert table["random"]["precision_at_num_flipped"] == 0.2
