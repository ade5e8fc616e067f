"""``tracin-jax <command>``: the one entry point.

Commands: ``train`` (fine-tune with checkpoints), ``grads`` (gradient stores),
``score`` (top proponents/opponents with word-level explanations, JSONL + HTML),
``explain`` (one pair's token decomposition), ``analyze`` (cancellation ratio,
mislabel clusters), ``sweep`` (case-deletion plan / run / report), ``demo`` (the
end-to-end job on the embedded synthetic data).
Config files are Python (``configs/NAME.py``) and every field is overridable as
``--config.train.lr=1e-3``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "tensorflow", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _resolve_config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    candidate = REPO_CONFIGS / (name if name.endswith(".py") else f"{name}.py")
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"config {name!r} not found (looked at {path} and {candidate})")


def _load_config(args, overrides):
    from tracin_jax import config as config_lib
    cfg = config_lib.load_config(_resolve_config_path(args.config))
    return config_lib.apply_overrides(cfg, overrides)


def cmd_train(args, overrides) -> int:
    from tracin_jax.train import train
    cfg = _load_config(args, overrides)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    result = train(cfg, workdir, progress=not args.no_progress)
    print(json.dumps({"workdir": str(workdir), "final_step": result.final_step,
                      "eval": result.eval_metrics,
                      "checkpoints": [{"step": c.step, "learning_rate": c.learning_rate}
                                      for c in result.checkpoints]}))
    return 0


def cmd_grads(args, overrides) -> int:
    from tracin_jax.pipeline import run_gradients
    if overrides:
        raise SystemExit("grads reads the run's saved config; pass --k/--dtype/... instead of --config.*")
    out = Path(args.out)
    for split in args.split.split(","):
        target = out if "," not in args.split else out / split
        store = run_gradients(args.run, split, target, steps=args.checkpoints, k=args.k,
                              topk_by=args.topk_by, dtype=args.dtype, shard_size=args.shard_size,
                              batch_size=args.batch_size, progress=not args.no_progress,
                              param_groups=args.param_groups, include_bias=args.include_bias)
        print(json.dumps({"store": str(target), "split": split, "examples": store.num_examples,
                          "checkpoints": [{"step": c.step, "learning_rate": c.learning_rate}
                                          for c in store.checkpoints]}))
    return 0


def cmd_demo(args, overrides) -> int:
    from tracin_jax.demo import run_demo
    cfg = _load_config(args, overrides)
    run_demo(cfg, Path(args.out), progress=not args.no_progress)
    return 0


def _method_options(items) -> dict:
    """``["k=10", "damping=0.1"]`` -> ``{"k": 10, "damping": 0.1}`` (Python literals, else strings)."""
    import ast
    options = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"--opt {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        try:
            options[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key.strip()] = text
    return options


def _read_candidates(path):
    """JSON list of train ids (shared), or ``{test_id: [train ids]}``."""
    if path is None:
        return None, None
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        return None, {int(k): [int(i) for i in v] for k, v in data.items()}
    if isinstance(data, list):
        return [int(i) for i in data], None
    raise SystemExit(f"{path}: expected a JSON list of train ids or an object test_id -> ids")


def _parse_part(text):
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--part {text!r} must look like I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise SystemExit(f"--part {text!r}: need 0 <= I < N")
    return index, count


def cmd_score(args, overrides) -> int:
    from tracin_jax import mesh as mesh_lib
    from tracin_jax.methods import RunContext, get_method, merge, top_k
    from tracin_jax.methods.retrieval import Retrieval
    from tracin_jax.report.outputs import write_outputs
    from tracin_jax.store import GradientStore

    if overrides:
        raise SystemExit("score takes no --config.* overrides; pass method options with --opt key=value")
    mesh_lib.initialize_distributed()
    test_store, train_store = GradientStore(args.test), GradientStore(args.train)
    context = RunContext.from_run(args.run) if args.run else None
    method = get_method(args.method, **_method_options(args.opt))
    out = Path(args.out)
    if args.merge:
        result = merge([Retrieval.load(p) for p in args.merge])
    else:
        candidates, per_test = _read_candidates(args.candidates)
        part = _parse_part(args.part)
        result = top_k(method, test_store, train_store, args.top, context=context,
                       mesh=mesh_lib.make_local_mesh(), candidates=candidates,
                       per_test_candidates=per_test, part=part, progress=not args.no_progress)
        if part is not None:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"part-{part[0]}-of-{part[1]}.npz"
            result.save(path)
            print(json.dumps({"part": str(path), "method": result.method, "k": result.k}))
            return 0
    import jax
    if jax.process_index() != 0:  # every process holds the merged result; one writes it
        return 0
    summary = write_outputs(out, result, method, test_store, train_store, context=context,
                            top_tokens=args.top_tokens, html_top=args.html_top, html=not args.no_html)
    print(json.dumps(summary, default=str))
    return 0


def cmd_explain(args, overrides) -> int:
    from tracin_jax.methods import RunContext
    from tracin_jax.methods.explain import explain_pair
    from tracin_jax.store import GradientStore

    if overrides:
        raise SystemExit("explain takes no --config.* overrides; pass method options with --opt key=value")
    context = RunContext.from_run(args.run) if args.run else None
    e = explain_pair(args.method, GradientStore(args.test), args.test_id, GradientStore(args.train),
                     args.train_id, context=context, options=_method_options(args.opt))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracin-jax", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, help_, func, default_config=None):
        p = sub.add_parser(name, help=help_, description=help_ + " Override any config field with"
                           " --config.FIELD=VALUE (e.g. --config.train.lr=1e-3).")
        p.add_argument("--config", default=default_config, required=default_config is None,
                       help="config file (configs/NAME.py) or a name in configs/")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    p = add("train", "Fine-tune a model, saving checkpoints with their learning rates.", cmd_train)
    p.add_argument("--workdir", help="run directory (default runs/<config.name>); resumes if it has checkpoints")
    p = sub.add_parser("grads", help="Per-example word-embedding gradients of a split into a store.")
    p.add_argument("--run", required=True, help="training run directory (tracin-jax train --workdir)")
    p.add_argument("--split", default="train", help="train, eval or test (comma-separated for several)")
    p.add_argument("--checkpoints", default=None, help="steps, e.g. 3,5,8 (default: all)")
    p.add_argument("--k", default=None, help="top-k positions per example (SPEC eq. 5); 0 = exact")
    p.add_argument("--topk-by", default=None, choices=("position", "token"))
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
    p.add_argument("--shard-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--param-groups", default=None,
                   help="also store per-example gradients of these parameter groups (comma-separated, "
                        "or 'all') from the same pass, as the field param_grads")
    p.add_argument("--include-bias", action="store_true", help="with --param-groups: keep biases")
    p.add_argument("--out", required=True, help="store directory (resumes if it exists)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_grads)
    p = sub.add_parser("score", help="Top proponents/opponents of each test point, with the "
                       "words that drive each score (JSONL + HTML report).")
    p.add_argument("--method", required=True, help="e.g. tracin_we_topk, tracin_last, tracin_layer[layer_0]")
    p.add_argument("--test", required=True, help="gradient store of the test points")
    p.add_argument("--train", required=True, help="gradient store of the training examples")
    p.add_argument("--run", default=None, help="training run directory (texts, tokens, parameters)")
    p.add_argument("--top", type=int, default=100, help="proponents and opponents kept per test point")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--opt", action="append", default=[], help="method option key=value (repeatable)")
    p.add_argument("--candidates", default=None,
                   help="JSON: train ids, or {test_id: [train ids]} (e.g. the no-overlap experiment)")
    p.add_argument("--part", default=None, help="I/N: score only training shards s %% N == I")
    p.add_argument("--merge", nargs="+", default=None, help="merge part-*.npz files, then write outputs")
    p.add_argument("--top-tokens", type=int, default=5, help="tokens listed per JSONL line")
    p.add_argument("--html-top", type=int, default=10, help="neighbors per kind in the HTML report")
    p.add_argument("--no-html", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("explain", help="One pair's score decomposed over its shared tokens.")
    p.add_argument("--method", default="tracin_we_topk")
    p.add_argument("--test", required=True, help="gradient store of the test points")
    p.add_argument("--train", required=True, help="gradient store of the training examples")
    p.add_argument("--test-id", type=int, required=True)
    p.add_argument("--train-id", type=int, required=True)
    p.add_argument("--run", default=None, help="training run directory (decodes tokens)")
    p.add_argument("--opt", action="append", default=[], help="method option key=value (repeatable)")
    p.add_argument("--top", type=int, default=None, help="show the N tokens of largest |contribution|")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_explain)
    p = add("demo", "End-to-end job on the embedded synthetic data.", cmd_demo, default_config="demo")
    p.add_argument("--out", default="runs/demo")
    from tracin_jax.analysis.commands import register as register_analyze
    register_analyze(sub)  # analyze cancellation | clusters
    from tracin_jax.deletion.commands import register as register_sweep
    register_sweep(sub)  # sweep plan | run | report
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --config.a.b=v overrides are collected here; argparse sees the rest.
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    args = parser_args = build_parser().parse_args(rest)
    _setup_logging(parser_args.verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tracin_jax.mesh import initialize_distributed
    initialize_distributed()  # multi-host jobs (TPU pod, SLURM, coordinator env); no-op otherwise
    return int(args.func(args, overrides) or 0)


if __name__ == "__main__":
    sys.exit(main())
