"""``tracin-jax train``: fine-tune with checkpoints that record their learning rates."""
from __future__ import annotations

from pathlib import Path

from tracin_jax.commands import load_config, print_json
from tracin_jax.mesh import initialize_distributed
from tracin_jax.train import train


def run(args, overrides) -> int:
    initialize_distributed()
    cfg = load_config(args.config, overrides)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    result = train(cfg, workdir, progress=not args.no_progress, overwrite=args.overwrite,
                   verify=not args.no_verify)
    print_json({"workdir": str(workdir), "final_step": result.final_step, "eval": result.eval_metrics,
                "checkpoints": [{"step": c.step, "learning_rate": c.learning_rate} for c in result.checkpoints]})
    return 0
