"""Orbax checkpoints that remember the learning rate in force (TracIn needs eta_c).

Layout under ``WORKDIR/checkpoints/<step>/``: items ``params``, ``opt_state`` (orbax
StandardSave) and ``meta`` (JSON: step, epoch, learning_rate, ...). Parameters can
be restored on their own, without building the optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    learning_rate: float
    epoch: float


class CheckpointStore:
    """Thin wrapper over ``ocp.CheckpointManager`` keeping every checkpoint."""

    def __init__(self, directory: str | Path, *, max_to_keep: int | None = None):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("params", "opt_state", "meta"),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params, opt_state, meta: dict[str, Any]) -> None:
        meta = {k: (float(v) if isinstance(v, (np.floating, jax.Array)) else v) for k, v in meta.items()}
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(dict(meta, step=int(step))),
            ),
        )
        self.manager.wait_until_finished()

    def restore(self, step: int, params_target, opt_state_target):
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(params_target),
                opt_state=ocp.args.StandardRestore(opt_state_target),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["params"], restored["opt_state"], dict(restored["meta"])

    def restore_params(self, step: int, params_target=None):
        """Parameters of one checkpoint (host numpy arrays if no target is given)."""
        restored = self.manager.restore(
            int(step), args=ocp.args.Composite(params=ocp.args.StandardRestore(params_target)))
        return restored["params"]

    def meta(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def infos(self) -> list[CheckpointInfo]:
        out = []
        for step in self.steps():
            m = self.meta(step)
            out.append(CheckpointInfo(step=step, learning_rate=float(m["learning_rate"]),
                                      epoch=float(m.get("epoch", 0.0))))
        return out

    def close(self) -> None:
        self.manager.close()
