"""``tracin-jax score``: top proponents/opponents of each test point with word-level explanations."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from tracin_jax import mesh as mesh_lib
from tracin_jax.commands import (method_options, no_overrides, parse_part, print_json, read_candidates,
                                 report_weights)
from tracin_jax.errors import OutputExistsError, UsageError
from tracin_jax.files import atomic_save_npy, atomic_write_json
from tracin_jax.methods import get_method, merge, score_matrix, top_k
from tracin_jax.rankings import Rankings
from tracin_jax.report.outputs import write_outputs
from tracin_jax.stages.gradients import run_context
from tracin_jax.store import GradientStore


def write_matrix(path: str | Path, method, test_store, train_store, *, context=None, max_gb: float = 4.0) -> dict:
    """The dense score matrix as ``path`` (.npy) and ``path.ids.json``; refuses one above ``max_gb``."""
    size = 4 * test_store.num_examples * train_store.num_examples
    if size > max_gb * 1e9:
        raise UsageError(f"the score matrix would hold {test_store.num_examples} x {train_store.num_examples} "
                         f"float32 = {size / 1e9:.1f} GB (--max-matrix-gb {max_gb:g})",
                         "score top-k rankings instead (--top), or raise --max-matrix-gb")
    matrix = score_matrix(method, test_store, train_store, context=context, mesh=mesh_lib.make_local_mesh())
    path = Path(path)
    atomic_save_npy(path, np.asarray(matrix.scores, np.float32))
    ids = {"rows": "test_ids", "columns": "train_ids", "method": method.describe(),
           "test_ids": [int(i) for i in matrix.test_ids], "train_ids": [int(i) for i in matrix.train_ids],
           "checkpoints": [{"step": w.step, "weight": w.weight}
                           for w in method.checkpoint_weights(test_store, train_store)]}
    atomic_write_json(path.with_suffix(".ids.json"), ids)
    return {"matrix": str(path), "ids": str(path.with_suffix(".ids.json")),
            "shape": [int(x) for x in matrix.scores.shape]}


def check_outputs(out: Path, arguments: dict, overwrite: bool) -> None:
    """``--out`` may hold this command's own earlier results (rewritten), not others'."""
    summary = out / "summary.json"
    if not summary.exists() or overwrite:
        return
    try:
        before = json.loads(summary.read_text()).get("arguments")
    except (OSError, json.JSONDecodeError):
        before = None
    if before != json.loads(json.dumps(arguments)):
        what = "scores made with other arguments" if before else "scores of unknown origin"
        differ = [k for k in arguments if (before or {}).get(k) != json.loads(json.dumps(arguments)).get(k)]
        raise OutputExistsError(f"{out} already holds {what}" + (f" (differ in {differ})" if before else ""),
                                "use another --out, or pass --overwrite to replace them")


def run(args, overrides) -> int:
    no_overrides("score", overrides, "pass method options with --opt key=value")
    if args.out is None and args.matrix is None:
        raise UsageError("score needs --out (rankings and report) or --matrix (the dense scores)")
    part = parse_part(args.part)  # usage errors before any work
    mesh_lib.initialize_distributed()
    test_store, train_store = GradientStore(args.test), GradientStore(args.train)
    context = run_context(args.run, verify=not args.no_verify) if args.run else None
    method = get_method(args.method, **method_options(args.opt)).prepare(
        test_store, train_store, context, allow_mismatch=args.allow_mismatch)
    report_weights(method.name, [(w.step, w.weight) for w in method.checkpoint_weights(test_store, train_store)])
    if args.matrix:
        written = write_matrix(args.matrix, method, test_store, train_store, context=context,
                               max_gb=args.max_matrix_gb)
        if args.out is None:
            print_json(written)
            return 0
    out = Path(args.out)
    arguments = {"method": method.describe(), "test": str(Path(args.test).absolute()),
                 "train": str(Path(args.train).absolute()), "top": args.top,
                 "candidates": None if args.candidates is None else str(Path(args.candidates).absolute()),
                 "merge": None if not args.merge else [str(Path(p).absolute()) for p in args.merge]}
    check_outputs(out, arguments, args.overwrite)
    if args.merge:
        result = merge([Rankings.load(p) for p in args.merge])
    else:
        candidates, per_test = read_candidates(args.candidates)
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
                            top_tokens=args.top_tokens, html_top=args.html_top, html=not args.no_html,
                            arguments=arguments)
    print_json(summary)
    return 0
