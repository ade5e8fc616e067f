"""``make demo``: the main job end to end on the embedded synthetic corpus.

train (checkpoints with learning rates) → gradients of train and test points into
gradient stores.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import ml_collections

log = logging.getLogger(__name__)


def run_demo(cfg: ml_collections.ConfigDict, out: Path, *, progress: bool = True) -> dict:
    from tracin_jax.pipeline import run_gradients
    from tracin_jax.train import prepare_run, train

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
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
