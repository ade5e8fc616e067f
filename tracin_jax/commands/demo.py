"""``tracin-jax demo``: the main job end to end on the embedded synthetic data."""
from __future__ import annotations

from pathlib import Path

from tracin_jax.commands import load_config
from tracin_jax.stages.demo import run_demo


def run(args, overrides) -> int:
    cfg = load_config(args.config, overrides)
    run_demo(cfg, Path(args.out), progress=not args.no_progress)
    return 0
