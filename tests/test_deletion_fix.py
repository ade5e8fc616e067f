"""Targeted fixing (appendix L) and the LDS / mislabel columns, through the CLI: plan -> run -> report."""
import json

import numpy as np
import pytest

from tracin_jax import cli
from tracin_jax.deletion.plan import load_manifest
from tracin_jax.deletion.runner import load_results

from tracin_jax.methods.explain import explain_pair
from tracin_jax.stages.gradients import run_context, run_gradients
from tracin_jax.stages.rankings import rank
from tracin_jax.store import GradientStore
from tracin_jax.train import prepare_run, train

from test_deletion_planted import planted_config


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory):
    """A small model (eval accuracy ~0.75) that makes borderline mistakes to fix."""
    root = tmp_path_factory.mktemp("fix")
    # The planted test's corpus without opponents, at half its width: a weaker model.
    cfg = planted_config(seed=1, opponents=0)
    cfg.model.hidden_size, cfg.model.intermediate_size = 32, 64
    cfg.data.synthetic.flip_fraction = 0.05
    setup = prepare_run(cfg, root / "run")
    train(cfg, root / "run", setup=setup, progress=False)
    for split in ("train", "test"):
        run_gradients(root / "run", split, root / "grads" / split, setup=setup, progress=False)
    return root, setup


def test_fix_lds_mislabel_through_the_cli(weak_run, capsys):
    root, setup = weak_run
    sweep = root / "sweep"
    rc = cli.main(["sweep", "plan", "--run", str(root / "run"), "--out", str(sweep),
                   "--train-store", str(root / "grads" / "train"), "--test-store", str(root / "grads" / "test"),
                   "--no-measure", "--config.sweep.k_grid=(5,)", "--config.sweep.seeds=(0, 1)",
                   "--config.sweep.test_points_per_class=1", "--config.sweep.signs=('-',)",
                   "--config.sweep.lds.num_subsets=6", "--config.sweep.fix.num_points=2",
                   "--config.sweep.fix.k_grid=(4, 8)", "--config.sweep.replicas=24"])
    assert rc == 0
    manifest = load_manifest(sweep)
    assert len(manifest["fix_points"]) == 2
    assert manifest["lds"]["num_subsets"] == 6 and set(manifest["mislabel"]["scores"]) == {"tracin_we_topk", "tracin_last"}
    kinds = [t["kind"] for j in manifest["jobs"] for t in j["tags"]]
    # 2 fix points x 2 methods x 2 k x 2 seeds removing opponents; [PAD] edits need a
    # word-level decomposition, so only tracin_we_topk gets fix (b)
    assert kinds.count("fix_remove") == 2 * 2 * 2 * 2 and kinds.count("fix_pad") == 2 * 1 * 2 * 2
    assert kinds.count("lds") == 6

    # fix (b): each edit is the opponent's most negatively contributing token (sec. 4.3)
    train_store = GradientStore(root / "grads" / "train")
    fix_store = GradientStore(sweep / "fix_grads")
    point = manifest["fix_points"][0]["id"]
    job = next(j for j in manifest["jobs"] for t in j["tags"]
               if t["kind"] == "fix_pad" and t["test"] == point and t["method"] == "tracin_we_topk" and t["k"] == 4)
    context = run_context(root / "run", setup=setup)
    ranking = rank("tracin_we_topk", fix_store, train_store, 8, with_tokens=True)
    opponents = ranking.top(point, "opponents", 4).tolist()
    for train_id, token in job["edits"]:
        assert train_id in opponents
        e = explain_pair("tracin_we_topk", fix_store, point, train_store, train_id, context=context,
                         options={"k": int(train_store.manifest["k"])})
        assert e.most_negative is not None and e.most_negative.token_id == token
    assert job["removed"] == [] and len(job["edits"]) >= 1

    assert cli.main(["sweep", "run", "--manifest", str(sweep), "--no-progress"]) == 0
    assert cli.main(["sweep", "report", "--manifest", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "LDS ↑" in out and "mislabel AUC ↑" in out and "AUC-DEL− ↑" in out
    summary = json.loads((sweep / "report" / "summary.json").read_text())
    for name in ("fix_table.md", "fix_curves.png", "deletion_curves.png", "table.csv"):
        assert (sweep / "report" / name).stat().st_size > 0

    # fix rate == share of retrains where the mistake is now predicted correctly (brute force)
    results = load_results(sweep)
    col = manifest["eval_points"].index(point)
    gold = manifest["fix_points"][0]["label"]
    cells = {}
    for j in manifest["jobs"]:
        for t in j["tags"]:
            if t["kind"] in ("fix_remove", "fix_pad"):
                cells.setdefault((t["method"], t["kind"], t["k"]), []).extend(
                    [results[j["id"]]["pred"][manifest["eval_points"].index(p["id"])] == p["label"]
                     for p in manifest["fix_points"] if p["id"] == t["test"]])
    curve = summary["fix"]["curves"]["tracin_last/fix_remove"]
    assert curve["k"] == [0, 4, 8]
    assert curve["fix_rate"][1:] == pytest.approx([np.mean(cells[("tracin_last", "fix_remove", k)]) for k in (4, 8)])
    base = [results[j["id"]]["pred"][col] == gold for j in manifest["jobs"] if j["tags"][0]["kind"] == "baseline"]
    assert 0.0 <= summary["fix"]["baseline_fix_rate"] <= 1.0 and len(base) == 2
    # mislabel detection: ROC AUC of self-influence against the planted flips (sklearn)
    from sklearn.metrics import roc_auc_score
    flipped = set(setup.extras["ground_truth"]["flipped_train_ids"])
    for method, rel in manifest["mislabel"]["scores"].items():
        with np.load(sweep / rel) as z:
            expected = roc_auc_score([int(i) in flipped for i in z["ids"]], z["scores"])
        assert summary["mislabel"][method]["auc"] == pytest.approx(expected, abs=1e-9)
        assert summary["mislabel"][method]["num_flipped"] == len(flipped) > 0
    assert summary["lds"]["tracin_we_topk"]["subsets"] == 6
    assert -1.0 <= summary["lds"]["tracin_we_topk"]["lds"] <= 1.0
