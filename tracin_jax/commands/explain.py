"""``tracin-jax explain``: one pair's score, token by token."""
from __future__ import annotations

import json

from tracin_jax.commands import method_options, no_overrides
from tracin_jax.methods.explain import explain_pair
from tracin_jax.stages.gradients import run_context
from tracin_jax.store import GradientStore


def run(args, overrides) -> int:
    no_overrides("explain", overrides, "pass method options with --opt key=value")
    context = run_context(args.run, verify=not args.no_verify) if args.run else None
    e = explain_pair(args.method, GradientStore(args.test), args.test_id, GradientStore(args.train),
                     args.train_id, context=context, options=method_options(args.opt),
                     allow_mismatch=args.allow_mismatch)
    if args.json:
        print(json.dumps({"test_id": e.test_id, "train_id": e.train_id, **e.to_json(top=args.top)}))
        return 0
    kind = "proponent" if e.score > 0 else "opponent" if e.score < 0 else "neutral"
    print(f"{args.method}: test {e.test_id} <- train {e.train_id}: score {e.score:+.6g} ({kind})")
    if not e.tokens:
        print("(no word-level decomposition for this method)")
        return 0
    shown = e.tokens if args.top is None else sorted(e.tokens, key=lambda t: -abs(t.contribution))[:args.top]
    shown = sorted(shown, key=lambda t: -t.contribution)
    scale = max(abs(t.contribution) for t in shown) or 1.0
    width = max(len(t.token) for t in shown)
    for t in shown:
        bar = ("+" if t.contribution > 0 else "-") * max(1, round(30 * abs(t.contribution) / scale))
        print(f"  {t.token:<{width}}  {t.contribution:+.4e}  {bar}")
    total = sum(t.contribution for t in e.tokens)
    print(f"  sum of {len(e.tokens)} token contributions: {total:+.6g}")
    return 0
