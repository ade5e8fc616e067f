"""``make demo``: the main job end to end on the embedded synthetic corpus.

train (checkpoints with learning rates) → gradients of train and test points into
gradient stores → top proponents/opponents of each test point with TracIn-WE-topk,
explained word by word (JSONL + HTML report) → the planted-trigger ground-truth
check: precision@10 of tracin_we_topk vs tracin_last proponents.
"""
from __future__ import annotations

import logging
from pathlib import Path

import ml_collections
import numpy as np

from tracin_jax import mesh as mesh_lib
from tracin_jax.files import atomic_write_json
from tracin_jax.methods import precision_at_k, top_k
from tracin_jax.report.outputs import write_outputs
from tracin_jax.stages.demo_deletion import run_deletion_demo
from tracin_jax.stages.gradients import run_context, run_gradients, subset_gradients
from tracin_jax.store import GradientStore
from tracin_jax.train import prepare_run, train

log = logging.getLogger(__name__)


def run_demo(cfg: ml_collections.ConfigDict, out: Path, *, progress: bool = True) -> dict:
    out = Path(out)
    run_dir = out / "run"
    setup = prepare_run(cfg, run_dir)
    print(f"[demo] data: {len(setup.train)} train / {len(setup.eval)} eval examples, "
          f"{len(setup.texts['train'].label_names)} classes; vocab {setup.tokenizer.vocab_size}")
    result = train(cfg, run_dir, setup=setup, progress=progress)
    acc = result.eval_metrics["accuracy"]
    chance = 1.0 / len(setup.texts["train"].label_names)
    print(f"[demo] eval accuracy {acc:.3f} (chance {chance:.3f}) after {result.final_step} steps")
    print("[demo] checkpoints (step, learning rate): "
          + ", ".join(f"({c.step}, {c.learning_rate:g})" for c in result.checkpoints))
    summary = {"eval_accuracy": acc, "chance": chance,
               "checkpoints": [[c.step, c.learning_rate] for c in result.checkpoints]}
    for split in ("train", "test"):
        store = run_gradients(run_dir, split, out / "grads" / split, progress=progress, setup=setup)
        print(f"[demo] gradient store {out / 'grads' / split}: {store.num_examples} examples x "
              f"{len(store.checkpoints)} checkpoints")
        summary[f"{split}_store"] = str(out / "grads" / split)
    summary.update(score_and_report(setup, run_dir, out, progress=progress))
    deletion = run_deletion_demo(setup, run_dir, out / "deletion",
                                 train_store=GradientStore(out / "grads" / "train"), progress=progress)
    table = out / "deletion" / "report" / "table.md"
    if table.exists() and not progress:
        print(f"[demo] case deletion ({out / 'deletion' / 'report'}):\n{table.read_text()}")
    summary["deletion"] = {"report": str(out / "deletion" / "report"),
                           **{k: v for k, v in deletion.items() if isinstance(v, (int, float, str))},
                           "auc_del": {m: {sign: deletion["deletion"][m][sign]["auc_del"] for sign in deletion["signs"]}
                                       for m in deletion["methods"]},
                           "auc_del_ci": {m: {sign: deletion["deletion"][m][sign].get("auc_del_ci")
                                              for sign in deletion["signs"]} for m in deletion["methods"]},
                           "test_points": deletion["test_points"], "seeds": deletion["seeds"],
                           "k_grid": deletion["k_grid"]}
    atomic_write_json(out / "demo_summary.json", summary)
    _closing(out, summary)
    return summary


def _closing(out: Path, summary: dict) -> None:
    """What the demo produced, what to open first, and how to go on from the command line."""
    files = [
        (out / "scores" / "report.html", "the report: each test point, its proponents and opponents, words highlighted"),
        (out / "deletion" / "report" / "deletion_curves.png", "DEL+/DEL- curves of the case-deletion sweep"),
        (out / "deletion" / "report" / "table.md", "AUC-DEL with intervals (Table 4 of the paper, planted data)"),
        (out / "scores" / "scores.jsonl", "one line per (test point, proponent/opponent, rank), for scripts"),
        (out / "demo_summary.json", "every number above"),
    ]
    print("\n[demo] done. Open first:")
    for path, what in files:
        print(f"  {path}\n      {what}")
    print("[demo] the run, its gradient stores and scores are ordinary tracin-jax artifacts; from here:\n"
          "  . .venv/bin/activate            # puts tracin-jax on your PATH (or call .venv/bin/tracin-jax)\n"
          f"  tracin-jax explain --run {out / 'run'} --test {out / 'grads' / 'test'} --train "
          f"{out / 'grads' / 'train'} --test-id {summary['example_pair']['test_id']} "
          f"--train-id {summary['example_pair']['train_id']}\n"
          "  tracin-jax --help")


# Neighbors kept per test point in the demo report; precision@K of the trigger check.
DEMO_TOP = 10
PRECISION_K = 10


def we_method_name(k: int | None) -> tuple[str, dict]:
    """tracin_we_topk for top-k stores, tracin_we for exact ones."""
    return ("tracin_we", {}) if k is None else ("tracin_we_topk", {"k": int(k)})


def trigger_relevance(ground_truth: dict) -> dict[int, list[int]]:
    """Planted ground truth: each trigger eval point -> the training examples of its trigger."""
    return {int(e): [int(i) for i in t["train_ids"]] for t in ground_truth["triggers"]
            for e in t["eval_ids"]}


def trigger_precision(setup, run_dir: Path, train_store, out_dir: Path, *,
                      methods=("tracin_we_topk", "tracin_last"), k: int = PRECISION_K,
                      mesh=None, progress: bool = True) -> dict[str, float]:
    """Mean precision@k of each method's proponents for the planted trigger test points."""
    relevant = trigger_relevance(setup.extras["ground_truth"])
    rows = np.flatnonzero(np.isin(setup.texts["eval"].ids, list(relevant)))
    store, _, _ = subset_gradients(setup, run_dir, "eval", rows, "eval_triggers", out_dir, progress=progress)
    we_name, we_options = we_method_name(store.manifest.get("k"))
    out = {}
    for name in methods:
        options = we_options if name == "tracin_we_topk" else {}
        name = we_name if name == "tracin_we_topk" else name
        result = top_k(name, store, train_store, k, options=options, mesh=mesh)
        out[name] = float(np.mean(list(precision_at_k(result, relevant, k).values())))
    return out


def score_and_report(setup, run_dir: Path, out: Path, *, progress: bool = True) -> dict:
    """Scores the test store against the train store and writes ``out/scores``."""
    context = run_context(run_dir, setup=setup)
    mesh = mesh_lib.make_local_mesh()
    train_store = GradientStore(out / "grads" / "train")
    test_store = GradientStore(out / "grads" / "test")
    name, options = we_method_name(train_store.manifest.get("k"))
    summary = {}
    extra = {}
    marks, train_marks, more_tests = {}, {}, []
    if "ground_truth" in setup.extras:
        precision = trigger_precision(setup, run_dir, train_store, out / "grads" / "eval_triggers",
                                      mesh=mesh, progress=progress)
        print(f"[demo] planted triggers: precision@{PRECISION_K} of proponents "
              + ", ".join(f"{m} {p:.3f}" for m, p in precision.items()))
        summary["trigger_precision_at_10"] = precision
        extra = {f"trigger precision@{PRECISION_K}": ", ".join(f"{m} {p:.3f}" for m, p in precision.items())}
        # The trigger test points (the ones the precision is about) join the report, marked,
        # and so do the planted training examples and flipped labels among the neighbours.
        truth = setup.extras["ground_truth"]
        rows = np.flatnonzero(np.isin(setup.texts["eval"].ids, list(trigger_relevance(truth))))
        trigger_store = GradientStore(out / "grads" / "eval_triggers")  # written by trigger_precision
        context.add_split("eval_triggers", setup.texts["eval"].subset(rows), setup.eval.subset(rows))
        more_tests = [(top_k(name, trigger_store, train_store, DEMO_TOP, options=options, context=context,
                             mesh=mesh), trigger_store)]
        marks = {int(e): f"trigger {t['token']}" for t in truth["triggers"] for e in t["eval_ids"]}
        train_marks = {int(i): f"planted {t['token']}" for t in truth["triggers"] for i in t["train_ids"]}
        train_marks.update({int(i): f"planted opponent {t['token']}" for t in truth["triggers"]
                            for i in t.get("opponent_train_ids", ())})
        train_marks.update({int(i): "flipped" for i in truth.get("flipped_train_ids", ())})
    result = top_k(name, test_store, train_store, DEMO_TOP, options=options, context=context, mesh=mesh)
    report = write_outputs(out / "scores", result, name, test_store, train_store, context=context,
                           options=options, html_top=DEMO_TOP, extra=extra, marks=marks,
                           train_marks=train_marks, more_tests=more_tests)
    print(f"[demo] {name}: top {DEMO_TOP} proponents/opponents of {len(result.test_ids)} test points "
          f"-> {out / 'scores' / 'scores.jsonl'}, report {report['html']}")
    summary["scores"] = str(out / "scores")
    summary["report"] = report["html"]
    # A pair to try `tracin-jax explain` on: the first test point and its top proponent.
    summary["example_pair"] = {"test_id": int(result.test_ids[0]), "train_id": int(result.proponents.ids[0, 0])}
    return summary
