"""``tracin-jax self-influence``: training examples ranked by self-influence."""
from __future__ import annotations

from tracin_jax.commands import method_options, no_overrides, print_json
from tracin_jax.stages.gradients import run_context
from tracin_jax.stages.self_influence import rank_self_influence, read_flipped
from tracin_jax.store import GradientStore


def run(args, overrides) -> int:
    no_overrides("self-influence", overrides, "pass method options with --opt key=value")
    context = run_context(args.run, verify=not args.no_verify) if args.run else None
    summary = rank_self_influence(args.method, GradientStore(args.store), args.out, context=context,
                                  options=method_options(args.opt), flipped_ids=read_flipped(args.flipped),
                                  html_top=args.html_top)
    detection = summary.get("detection")
    if detection:
        for name, row in detection.items():
            print(f"{name:>15}: ROC-AUC {row['auc']:.3f}, recall@10% {row['recall_at_10pct']:.3f}, "
                  f"recall@20% {row['recall_at_20pct']:.3f}")
    print_json({k: summary[k] for k in ("examples", "top", "files")})
    return 0
