"""``tracin-jax score``: top proponents/opponents of each test point with word-level explanations."""
from __future__ import annotations

from pathlib import Path

import jax

from tracin_jax import mesh as mesh_lib
from tracin_jax.commands import method_options, no_overrides, parse_part, print_json, read_candidates
from tracin_jax.methods import get_method, merge, top_k
from tracin_jax.rankings import Rankings
from tracin_jax.report.outputs import write_outputs
from tracin_jax.stages.gradients import run_context
from tracin_jax.store import GradientStore


def run(args, overrides) -> int:
    no_overrides("score", overrides, "pass method options with --opt key=value")
    mesh_lib.initialize_distributed()
    test_store, train_store = GradientStore(args.test), GradientStore(args.train)
    context = run_context(args.run, verify=not args.no_verify) if args.run else None
    method = get_method(args.method, **method_options(args.opt)).prepare(
        test_store, train_store, context, allow_mismatch=args.allow_mismatch)
    out = Path(args.out)
    if args.merge:
        result = merge([Rankings.load(p) for p in args.merge])
    else:
        candidates, per_test = read_candidates(args.candidates)
        part = parse_part(args.part)
        result = top_k(method, test_store, train_store, args.top, context=context,
                       mesh=mesh_lib.make_local_mesh(), candidates=candidates,
                       per_test_candidates=per_test, part=part, progress=not args.no_progress)
        if part is not None:
            path = out / f"part-{part[0]}-of-{part[1]}.npz"
            result.save(path)
            print_json({"part": str(path), "method": result.method, "k": result.k})
            return 0
    if jax.process_index() != 0:  # every process holds the merged result; one writes it
        return 0
    summary = write_outputs(out, result, method, test_store, train_store, context=context,
                            top_tokens=args.top_tokens, html_top=args.html_top, html=not args.no_html)
    print_json(summary)
    return 0
