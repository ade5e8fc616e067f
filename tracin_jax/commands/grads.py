"""``tracin-jax grads``: per-example word-embedding gradients of a split into a gradient store."""
from __future__ import annotations

from pathlib import Path

from tracin_jax.commands import print_json, report_weights
from tracin_jax.errors import UsageError
from tracin_jax.train import load_run
from tracin_jax.mesh import initialize_distributed
from tracin_jax.stages.gradients import run_gradients


def run(args, overrides) -> int:
    initialize_distributed()
    out = Path(args.out)
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    if args.data and len(splits) != 1:
        raise UsageError("--data attaches one file as one --split NAME", "run grads once per file")
    setup = load_run(args.run, overrides)  # once for every split
    fields = {"text": args.text_field, "text_pair": args.pair_field, "label": args.label_field,
              "columns": None if not args.columns else [c.strip() for c in args.columns.split(",")],
              "encoding": args.encoding}
    for split in splits:
        target = out if len(splits) == 1 else out / split
        store = run_gradients(args.run, split, target, steps=args.checkpoints, k=args.k,
                              topk_by=args.topk_by, dtype=args.dtype, shard_size=args.shard_size,
                              batch_size=args.batch_size, progress=not args.no_progress,
                              param_groups=args.param_groups, include_bias=args.include_bias,
                              verify=not args.no_verify, overwrite=args.overwrite, setup=setup,
                              data=args.data, data_fields=fields)
        report_weights(f"the gradient store {target}", [(c.step, c.learning_rate) for c in store.checkpoints])
        print_json({"store": str(target), "split": split, "examples": store.num_examples,
                    "checkpoints": [{"step": c.step, "learning_rate": c.learning_rate}
                                    for c in store.checkpoints]})
    return 0
