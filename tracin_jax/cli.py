"""``tracin-jax <command>``: the one entry point.

Commands: ``train`` (fine-tune with checkpoints), ``demo`` (the end-to-end job on
the embedded synthetic data). Config files are Python (``configs/NAME.py``) and every
field is overridable as ``--config.train.lr=1e-3``.
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
                              batch_size=args.batch_size, progress=not args.no_progress)
        print(json.dumps({"store": str(target), "split": split, "examples": store.num_examples,
                          "checkpoints": [{"step": c.step, "learning_rate": c.learning_rate}
                                          for c in store.checkpoints]}))
    return 0


def cmd_demo(args, overrides) -> int:
    from tracin_jax.demo import run_demo
    cfg = _load_config(args, overrides)
    run_demo(cfg, Path(args.out), progress=not args.no_progress)
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
    p.add_argument("--out", required=True, help="store directory (resumes if it exists)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_grads)
    p = add("demo", "End-to-end job on the embedded synthetic data.", cmd_demo, default_config="demo")
    p.add_argument("--out", default="runs/demo")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --config.a.b=v overrides are collected here; argparse sees the rest.
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    args = parser_args = build_parser().parse_args(rest)
    _setup_logging(parser_args.verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return int(args.func(args, overrides) or 0)


if __name__ == "__main__":
    sys.exit(main())
