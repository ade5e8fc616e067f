"""Orbax checkpoints that remember the learning rate in force (TracIn needs eta_c).

Layout under ``WORKDIR/checkpoints/<step>/``: items ``params``, ``opt_state`` (orbax
StandardSave) and ``meta`` (JSON: step, epoch, learning_rate, ...). Parameters can
be restored on their own, without building the optimizer.

Integrity: ``save`` records in ``meta`` the sha256 of every parameter array
(``params_sha256``, :func:`tracin_jax.files.tree_sha256` of the host arrays), their
fingerprint (``params_fingerprint``) and one digest over the optimizer state leaves
(``opt_state_sha256``). ``restore`` and ``restore_params`` check them (``verify=True``,
the store's default) and raise :class:`~tracin_jax.errors.IntegrityError` naming the
checkpoint and the first parameter whose bytes changed. Checkpoints written before the
digests existed load with a one-time warning. A missing step, or one orbax cannot read
(truncated or deleted files), raises one :class:`~tracin_jax.errors.CheckpointError`.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from tracin_jax.errors import CheckpointError, IntegrityError, TracinError
from tracin_jax.files import array_sha256, tree_fingerprint, tree_sha256

log = logging.getLogger(__name__)

PARAMS_SHA256 = "params_sha256"
PARAMS_FINGERPRINT = "params_fingerprint"
OPT_STATE_SHA256 = "opt_state_sha256"

_warned_unverified: set[tuple[str, int]] = set()  # (directory, step): warn once per process


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    learning_rate: float
    epoch: float


def opt_state_sha256(opt_state) -> str:
    """One sha256 over the optimizer-state leaves: ``"<key path>=<array_sha256>"`` lines in
    tree order (the restored state has the structure of its target, so the same order)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(opt_state))[0]:
        digest.update(f"{jax.tree_util.keystr(path)}={array_sha256(leaf)}\n".encode())
    return digest.hexdigest()


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _json_value(v):
    if isinstance(v, (np.floating, jax.Array)) or (isinstance(v, np.ndarray) and v.shape == ()):
        return float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


class CheckpointStore:
    """Thin wrapper over ``ocp.CheckpointManager`` keeping every checkpoint.

    ``verify``: the default of ``restore`` / ``restore_params`` (check the recorded digests).
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int | None = None, verify: bool = True):
        self.directory = Path(directory).absolute()
        self.verify = bool(verify)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("params", "opt_state", "meta"),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    # ------------------------------------------------------------------ save

    def save(self, step: int, params, opt_state, meta: dict[str, Any]) -> None:
        """Saves host (or device) ``params`` / ``opt_state`` and ``meta`` plus their digests.

        ``opt_state=None``: parameters only (an imported checkpoint; it cannot be resumed)."""
        params = jax.device_get(params)
        digests = tree_sha256(params)
        meta = {k: _json_value(v) for k, v in meta.items()}
        meta.update({"step": int(step), PARAMS_SHA256: digests, PARAMS_FINGERPRINT: tree_fingerprint(digests)})
        items = {"params": ocp.args.StandardSave(params), "meta": None}
        if opt_state is not None:
            opt_state = jax.device_get(opt_state)
            meta[OPT_STATE_SHA256] = opt_state_sha256(opt_state)
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        items["meta"] = ocp.args.JsonSave(meta)
        self.manager.save(int(step), args=ocp.args.Composite(**items))
        self.manager.wait_until_finished()

    # ------------------------------------------------------------------ restore

    def restore(self, step: int, params_target, opt_state_target, *, verify: bool | None = None):
        """``(params, opt_state, meta)`` of checkpoint ``step`` (resume), verified against the
        recorded digests unless ``verify=False`` (default: the store's)."""
        step = self._check_step(step)
        meta = self.meta(step)
        restored = self._restore(step, params=ocp.args.StandardRestore(params_target),
                                 opt_state=ocp.args.StandardRestore(opt_state_target))
        params, opt_state = restored["params"], restored["opt_state"]
        if self.verify if verify is None else verify:
            self._verify_params(step, meta, params)
            recorded = meta.get(OPT_STATE_SHA256)
            if recorded is not None and opt_state_sha256(opt_state) != recorded:
                raise IntegrityError(f"checkpoint {self._step_dir(step)}: the optimizer state does not match "
                                     "the digest recorded when it was saved", self._hint(step))
        return params, opt_state, meta

    def restore_params(self, step: int, params_target=None, verify: bool | None = None):
        """Parameters of one checkpoint (host numpy arrays if no target is given), verified
        against the recorded digests unless ``verify=False`` (default: the store's)."""
        step = self._check_step(step)
        verify = self.verify if verify is None else verify
        meta = self.meta(step) if verify else None
        params = self._restore(step, params=ocp.args.StandardRestore(params_target))["params"]
        if verify:
            self._verify_params(step, meta, params)
        return params

    def meta(self, step: int) -> dict[str, Any]:
        step = self._check_step(step)
        return dict(self._restore(step, meta=ocp.args.JsonRestore())["meta"])

    def fingerprint(self, step: int) -> str | None:
        """The recorded fingerprint of checkpoint ``step``'s parameters (None: written before
        digests were recorded); gradient stores keep it to name their parameters."""
        return self.meta(step).get(PARAMS_FINGERPRINT)

    def infos(self) -> list[CheckpointInfo]:
        out = []
        for step in self.steps():
            m = self.meta(step)
            out.append(CheckpointInfo(step=step, learning_rate=float(m["learning_rate"]),
                                      epoch=float(m.get("epoch", 0.0))))
        return out

    def close(self) -> None:
        self.manager.close()

    # ------------------------------------------------------------------ helpers

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(int(step))

    def _check_step(self, step: int) -> int:
        step = int(step)
        if step in self.steps():
            return step
        available = sorted(self.manager.all_steps(read=True))  # written since the manager opened?
        if step not in available:
            raise CheckpointError(
                f"checkpoint step {step} not found in {self.directory} (available steps: "
                f"{', '.join(map(str, available)) or 'none'})",
                "pick one of the available steps, or train (again) to write it")
        return step

    def _restore(self, step: int, **items):
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except TracinError:
            raise
        except Exception as e:  # orbax / tensorstore / json: one line, not a traceback
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be read "
                f"({type(e).__name__}: {_first_line(e)})",
                f"its files are truncated or damaged; {self._retrain_hint(step)}") from e

    def _previous_step(self, step: int) -> int | None:
        earlier = [s for s in self.steps() if s < step]
        return earlier[-1] if earlier else None

    def _retrain_hint(self, step: int) -> str:
        previous = self._previous_step(step)
        where = f"re-train from step {previous}" if previous is not None else "re-train from the start"
        return f"{where} (delete {self.directory.name}/{step} and later)"

    def _hint(self, step: int) -> str:
        return f"{self._retrain_hint(step)} or pass --no-verify to use it anyway"

    def _verify_params(self, step: int, meta: dict[str, Any], params) -> None:
        recorded = meta.get(PARAMS_SHA256)
        if recorded is None:
            key = (str(self.directory), step)
            if key not in _warned_unverified:
                _warned_unverified.add(key)
                log.warning("checkpoint %d has no recorded digests (written by an older tracin_jax); "
                            "not verified (%s)", step, self._step_dir(step))
            return
        actual = tree_sha256(jax.device_get(params))
        if actual == recorded:
            return
        for path in sorted(set(actual) | set(recorded)):
            if actual.get(path) != recorded.get(path):
                if path not in actual:
                    problem = "is missing from the restored parameters"
                elif path not in recorded:
                    problem = "was not in the checkpoint when it was saved"
                else:
                    problem = (f"does not match the digest recorded when it was saved "
                               f"(sha256 {actual[path][:12]}... != {recorded[path][:12]}...)")
                raise IntegrityError(f"checkpoint {self._step_dir(step)}: parameter {path!r} {problem}",
                                     self._hint(step))
