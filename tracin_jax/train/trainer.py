"""Fine-tuning: a pure jitted train step, data-parallel over the device mesh.

The batch is sharded over the mesh's ``data`` axis and parameters are replicated;
``jax.jit`` partitions the step (the gradient all-reduce is inserted by XLA), so
the same code runs on 1 device, 8 fake CPU devices, a GPU box or a TPU pod slice.
Checkpoints record the learning rate in force (TracIn's eta_c) and the step;
a killed run restarts from its last checkpoint and reproduces the uninterrupted
run exactly (data order depends only on (seed, epoch), dropout only on (seed, step)).

Safety: one ``train`` per workdir (an exclusive lock on ``WORKDIR/.lock``); a
non-finite training loss, evaluation metric or parameter stops the run with
:class:`~tracin_jax.errors.TrainingDivergedError` before it reaches a checkpoint
(unless ``train.allow_nonfinite``); a config or data split with nothing to train is
refused before any work.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from tracin_jax import mesh as mesh_lib
from tracin_jax.data import iterate_batches, num_batches
from tracin_jax.errors import BusyError, ConfigError, DataError, TrainingDivergedError
from tracin_jax.files import atomic_write_json, atomic_write_text
from tracin_jax.models import WORD_EMBEDDING_PATH
from tracin_jax.train.checkpoints import CheckpointStore
from tracin_jax.train.setup import RunSetup, prepare_run

log = logging.getLogger(__name__)


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any


class SimulatedCrash(RuntimeError):
    """Raised by ``train(..., crash_after_step=N)`` to test kill-and-resume."""


def schedule_value(train_cfg: ml_collections.ConfigDict, count, total_steps) -> jax.Array:
    """Learning rate for update number ``count`` (0-based) of a run of ``total_steps`` updates.

    constant: ``lr``; linear: ``lr · (1 − min(t, T)/T)``; cosine: ``lr · ½(1 + cos(π min(t, T)/T))``,
    with ``t = count − warmup``, ``T = max(total_steps − warmup, 1)``, and ``lr · count/warmup``
    during a linear warmup (the formulas of optax's linear/cosine/join schedules).
    ``total_steps`` may be a traced value, so replicas of different lengths (case
    deletion removes different numbers of examples) share one vmapped program.
    """
    lr, warmup = float(train_cfg.lr), int(train_cfg.warmup_steps)
    if train_cfg.schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"train.schedule={train_cfg.schedule!r}; expected constant, linear or cosine")
    count = jnp.asarray(count, jnp.float32)
    decay_steps = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - warmup, 1.0)
    t = count - warmup if warmup > 0 else count
    if train_cfg.schedule == "constant":
        main = jnp.full_like(count, lr)
    elif train_cfg.schedule == "linear":
        main = lr * (1.0 - jnp.clip(t, 0.0, decay_steps) / decay_steps)
    else:
        main = lr * (0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, decay_steps) / decay_steps)))
    if warmup <= 0:
        return main
    return jnp.where(count < warmup, lr * jnp.clip(count, 0.0, warmup) / warmup, main)


def make_schedule(train_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule: constant, linear decay to 0, or cosine; optional linear warmup."""
    schedule_value(train_cfg, 0, total_steps)  # validates train.schedule now, not at trace time
    return lambda count: schedule_value(train_cfg, count, total_steps)


def _frozen_labels(params, freeze_word_embeddings: bool):
    def label(path, _):
        keys = tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)
        return "frozen" if freeze_word_embeddings and keys == WORD_EMBEDDING_PATH else "train"
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(train_cfg: ml_collections.ConfigDict, schedule: optax.Schedule,
                   params) -> optax.GradientTransformation:
    """SGD with momentum (the paper's) or AdamW; the word embedding can be frozen."""
    if train_cfg.optimizer == "sgd":
        tx = optax.sgd(schedule, momentum=float(train_cfg.momentum) or None)
        if train_cfg.weight_decay:
            tx = optax.chain(optax.add_decayed_weights(float(train_cfg.weight_decay)), tx)
    elif train_cfg.optimizer == "adamw":
        tx = optax.adamw(schedule, weight_decay=float(train_cfg.weight_decay))
    else:
        raise ValueError(f"train.optimizer={train_cfg.optimizer!r}; expected 'sgd' or 'adamw'")
    if train_cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(float(train_cfg.grad_clip_norm)), tx)
    if train_cfg.freeze_word_embeddings:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   _frozen_labels(params, True))
    return tx


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over rows with weight 1 (padding rows have weight 0)."""
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def apply_train_step(model, tx: optax.GradientTransformation, state: TrainState,
                     batch: dict[str, jax.Array], dropout_key: jax.Array):
    """One update on ``batch``: ``(state, metrics)``. Pure; vmappable over replicas
    (``deletion.replicas`` stacks states, batches, keys and per-replica optimizers)."""

    def loss_fn(params):
        out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                          batch["token_type_ids"], deterministic=False,
                          rngs={"dropout": dropout_key})
        return weighted_cross_entropy(out.logits, batch["labels"], batch["weights"]), out.logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = (jnp.argmax(logits, -1) == batch["labels"]) * batch["weights"]
    metrics = {"loss": loss, "accuracy": correct.sum() / jnp.maximum(batch["weights"].sum(), 1.0)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(model, tx: optax.GradientTransformation, dropout_seed: int) -> Callable:
    """Returns the pure step ``(state, batch) -> (state, metrics)``; jit it at the call site.

    Dropout key of update ``t``: ``fold_in(key(dropout_seed), t)``.
    """
    base_key = jax.random.key(dropout_seed)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        return apply_train_step(model, tx, state, batch, jax.random.fold_in(base_key, state.step))

    return train_step


def make_eval_step(model) -> Callable:
    def eval_step(params, batch):
        out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                          batch["token_type_ids"], deterministic=True)
        return jax.nn.softmax(out.logits.astype(jnp.float32), axis=-1)
    return eval_step


_BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "weights")


def predict_proba(model, params, encoded, batch_size: int, mesh) -> np.ndarray:
    """Softmax probabilities ``[N, C]`` for every example of an ``EncodedDataset``, in order."""
    step = jax.jit(make_eval_step(model))
    batch_size = mesh_lib.pad_to_multiple(batch_size, mesh.size)
    out = []
    for batch in iterate_batches(encoded, batch_size):
        probs = step(params, mesh_lib.shard_batch({k: batch[k] for k in _BATCH_KEYS}, mesh))
        out.append(np.asarray(probs)[batch["weights"] > 0])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(model, params, encoded, batch_size: int, mesh) -> dict[str, float]:
    probs = predict_proba(model, params, encoded, batch_size, mesh)
    labels = np.asarray(encoded.labels)
    nll = -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))
    return {"accuracy": float((probs.argmax(-1) == labels).mean()), "loss": float(nll.mean()),
            "num_examples": int(len(labels))}


def checkpoint_due(step: int, steps_per_epoch: int, total_steps: int,
                   train_cfg: ml_collections.ConfigDict) -> bool:
    """Whether a checkpoint is taken after update number ``step`` (1-based)."""
    if step == total_steps or step in tuple(train_cfg.checkpoint_steps):
        return True
    if train_cfg.checkpoint_every_steps and step % int(train_cfg.checkpoint_every_steps) == 0:
        return True
    every_epochs = int(train_cfg.checkpoint_every_epochs)
    return bool(every_epochs) and step % (every_epochs * steps_per_epoch) == 0



LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"


class WorkdirLock:
    """An exclusive, non-blocking ``flock`` on ``WORKDIR/.lock`` holding ``{"pid", "host"}``
    of its owner. The kernel releases it when the owner exits or dies; a second
    ``acquire`` (another process, or another lock object in this one) raises
    :class:`~tracin_jax.errors.BusyError` naming the holder. ``flock`` is per host on
    most network filesystems: runs sharing a workdir across hosts are not excluded."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder
                   else "another process")
            raise BusyError(f"workdir {self.workdir} is in use by {who}",
                            "wait for it, or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no stale holder for the next reader
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _all_finite(tree) -> bool:
    """Every floating leaf of the host ``tree`` is finite. Run on the arrays a checkpoint is
    about to write (fetched for the save anyway): it checks exactly the bytes written, costs
    ~2 ms for the demo model (a jitted reduction cost ~1 s of XLA compile per process here)."""
    return all(bool(np.isfinite(x).all()) for x in jax.tree_util.tree_leaves(tree)
               if jnp.issubdtype(np.asarray(x).dtype, jnp.inexact))


def check_train_config(train_cfg: ml_collections.ConfigDict) -> None:
    """Refuses (ConfigError) a ``train`` config with nothing to train or checkpoint."""
    max_steps = train_cfg.get("max_steps")
    if max_steps is not None:
        if int(max_steps) < 1:
            raise ConfigError(f"train.max_steps={max_steps}: nothing to train",
                              "set train.max_steps >= 1, or unset it (None) to train train.epochs epochs")
    elif int(train_cfg.epochs) < 1:
        raise ConfigError(f"train.epochs={train_cfg.epochs}: nothing to train",
                          "set train.epochs >= 1 (or train.max_steps)")
    if int(train_cfg.batch_size) < 1:
        raise ConfigError(f"train.batch_size={train_cfg.batch_size} must be >= 1")
    for key in ("checkpoint_every_epochs", "checkpoint_every_steps"):
        if int(train_cfg.get(key) or 0) < 0:
            raise ConfigError(f"train.{key}={train_cfg.get(key)} must be >= 0 (0: off)")
    bad = [s for s in tuple(train_cfg.get("checkpoint_steps") or ()) if int(s) < 1]
    if bad:
        raise ConfigError(f"train.checkpoint_steps={tuple(train_cfg.checkpoint_steps)} has steps < 1 ({bad})",
                          "checkpoint steps count updates from 1")


def _diverged(step: int, what: str, last_checkpoint: int | None,
              train_cfg: ml_collections.ConfigDict) -> TrainingDivergedError:
    written = ("no checkpoint written" if last_checkpoint is None
               else f"no checkpoint written after step {last_checkpoint}")
    clip = ("lower train.grad_clip_norm" if train_cfg.get("grad_clip_norm")
            else "enable train.grad_clip_norm (e.g. 1.0)")
    return TrainingDivergedError(
        f"training diverged at step {step} ({what}); {written}",
        f"lower train.lr (now {float(train_cfg.lr):g}), {clip}, "
        "or set train.allow_nonfinite=True to continue anyway")


def _first_nonfinite(losses: list[float]) -> int | None:
    for i, x in enumerate(losses):
        if not math.isfinite(x):
            return i
    return None


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drops ``metrics.jsonl`` lines after ``last_step`` (logged by a run that died after
    its last checkpoint) and unreadable ones (a line cut by the kill); atomic rewrite."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= last_step:
            kept.append(line)
    if kept != lines:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


@dataclass
class TrainResult:
    workdir: Path
    final_step: int
    checkpoints: list  # CheckpointInfo
    eval_metrics: dict[str, float]
    resumed_from: int | None


def train(cfg: ml_collections.ConfigDict, workdir: str | Path, *, setup: RunSetup | None = None,
          crash_after_step: int | None = None, progress: bool = True,
          keep: np.ndarray | None = None, verify: bool = True, overwrite: bool = False) -> TrainResult:
    """Fine-tunes ``cfg.model`` on ``cfg.data``, checkpointing into ``workdir/checkpoints``.

    Resumes from the latest checkpoint in ``workdir`` if there is one (verified against
    its recorded digests unless ``verify=False``). Holds ``workdir``'s lock throughout
    (:class:`WorkdirLock`; a second process gets ``BusyError``). A non-finite loss,
    evaluation metric or parameter raises ``TrainingDivergedError`` before the next
    checkpoint, unless ``train.allow_nonfinite``.
    ``overwrite`` deletes what ``workdir`` holds (a previous run) first, under the lock
    (not with ``setup``, whose ``prepare_run`` already wrote there).
    ``crash_after_step`` raises :class:`SimulatedCrash` after that update (tests).
    ``keep`` (``[N]`` bool over the training set) trains without the False rows
    (case deletion, exact: see ``iterate_batches``); epochs count kept examples.
    """
    workdir = Path(workdir)
    check_train_config(cfg.train)
    if overwrite and setup is not None:
        raise ValueError("train(overwrite=True) prepares the run itself: pass setup=None")
    with WorkdirLock(workdir):
        if overwrite:
            for child in workdir.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        return _train(cfg, workdir, setup=setup, crash_after_step=crash_after_step, progress=progress,
                      keep=keep, verify=verify)


def _train(cfg, workdir: Path, *, setup, crash_after_step, progress, keep, verify) -> TrainResult:
    setup = setup or prepare_run(cfg, workdir)
    train_cfg = cfg.train
    allow_nonfinite = bool(train_cfg.get("allow_nonfinite", False))
    mesh = mesh_lib.make_mesh(train_cfg.num_devices)
    batch_size = int(train_cfg.batch_size)
    if batch_size % mesh.size:
        raise ConfigError(f"train.batch_size={batch_size} must be divisible by the {mesh.size} devices")
    n_kept = len(setup.train) if keep is None else int(np.count_nonzero(keep))
    if n_kept == 0:
        if len(setup.train) == 0:
            raise DataError(f"the training split {cfg.data.train_split!r} (data.source={cfg.data.source!r}) "
                            "has no examples", "check data.source, data.files, data.train_split and "
                            "data.max_train")
        raise DataError(f"keep removes all {len(setup.train)} training examples: nothing to train")
    steps_per_epoch = num_batches(n_kept, batch_size)
    total_steps = int(train_cfg.max_steps if train_cfg.get("max_steps") is not None
                      else int(train_cfg.epochs) * steps_per_epoch)
    if total_steps < 1:  # the final step is always checkpointed: >= 1 step, >= 1 checkpoint
        raise ConfigError(f"train.epochs={train_cfg.epochs} x {steps_per_epoch} steps per epoch: nothing to train")
    schedule = make_schedule(train_cfg, total_steps)
    tx = make_optimizer(train_cfg, schedule, setup.params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=setup.params,
                       opt_state=tx.init(setup.params))

    store = CheckpointStore(workdir / "checkpoints", verify=verify)
    bar = None
    try:
        resumed_from = store.latest_step()
        history: list = []  # per-step metrics since the last log line
        if resumed_from is not None and resumed_from >= total_steps:
            log.warning("%s already holds the finished run (step %d of %d): nothing to train; use another "
                        "--workdir, or --overwrite to start over", workdir, resumed_from, total_steps)
        if resumed_from is not None:
            params, opt_state, meta = store.restore(resumed_from, state.params, state.opt_state)
            state = TrainState(step=jnp.asarray(resumed_from, jnp.int32), params=params, opt_state=opt_state)
            if resumed_from < total_steps:
                log.warning("resuming from checkpoint step %d (epoch %.2f) in %s", resumed_from,
                            meta.get("epoch", 0), workdir)
            window = meta.get("log_window") or {}
            history = [dict(zip(window, values)) for values in zip(*window.values())]
        metrics_path = workdir / METRICS_FILE
        _truncate_metrics(metrics_path, resumed_from or 0)
        # Fresh device buffers: the step donates its input state, and the caller's
        # setup.params must survive (it is reused by later stages).
        state = mesh_lib.replicate(jax.tree.map(np.array, jax.device_get(state)), mesh)
        step_fn = jax.jit(make_train_step(setup.model, tx, int(cfg.seed)), donate_argnums=(0,))

        start = int(state.step)
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
        step, t0 = start, time.time()
        last_checkpoint = resumed_from
        warned_nonfinite = False
        eval_metrics: dict[str, float] = {}

        def nonfinite(at_step: int, what: str) -> None:
            nonlocal warned_nonfinite
            if not allow_nonfinite:
                raise _diverged(at_step, what, last_checkpoint, train_cfg)
            if not warned_nonfinite:
                warned_nonfinite = True
                log.warning("training diverged at step %d (%s); continuing (train.allow_nonfinite=True)",
                            at_step, what)

        def check_losses(host_history: list[dict]) -> None:
            bad = _first_nonfinite([float(h["loss"]) for h in host_history])
            if bad is not None:
                nonfinite(step - len(host_history) + 1 + bad, f"loss {float(host_history[bad]['loss'])}")

        while step < total_steps:
            epoch = step // steps_per_epoch
            skip = step - epoch * steps_per_epoch
            batches = iterate_batches(setup.train, batch_size, seed=int(cfg.seed), epoch=epoch, keep=keep,
                                      group_by_length=int(train_cfg.group_by_length or 0),
                                      pad_to_multiple=int(train_cfg.pad_to_multiple or 0))
            for i, batch in enumerate(batches):
                if i < skip:
                    continue
                state, m = step_fn(state, mesh_lib.shard_batch({k: batch[k] for k in _BATCH_KEYS}, mesh))
                step += 1
                history.append(m)
                if bar is not None:
                    bar.update(1)
                if step % max(int(train_cfg.log_every_steps), 1) == 0 or step == total_steps:
                    host = jax.device_get(history)  # one transfer for the whole window
                    mean = {k: float(np.mean([float(h[k]) for h in host])) for k in host[0]}
                    history.clear()
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean['loss']:.4f}", acc=f"{mean['accuracy']:.3f}")
                    _append_jsonl(metrics_path, {"step": step, "epoch": step / steps_per_epoch,
                                                 "train_loss": mean["loss"], "train_accuracy": mean["accuracy"],
                                                 "elapsed_s": time.time() - t0})
                    check_losses(host)
                epoch_end = step % steps_per_epoch == 0 or step == total_steps
                if epoch_end:
                    eval_metrics = evaluate(setup.model, state.params, setup.eval,
                                            int(train_cfg.eval_batch_size), mesh)
                    _append_jsonl(metrics_path, {"step": step, "epoch": step / steps_per_epoch,
                                                 **{f"eval_{k}": v for k, v in eval_metrics.items()}})
                    log.info("step %d eval accuracy %.4f loss %.4f", step, eval_metrics["accuracy"],
                             eval_metrics["loss"])
                    bad = [k for k, v in eval_metrics.items() if not math.isfinite(v)]
                    if bad:
                        check_losses(jax.device_get(history))  # name the first diverged step
                        nonfinite(step, f"eval {bad[0]} {eval_metrics[bad[0]]}")
                if checkpoint_due(step, steps_per_epoch, total_steps, train_cfg):
                    host = jax.device_get(history)  # the log window so far: kept for a resume
                    params, opt_state = jax.device_get((state.params, state.opt_state))
                    if not allow_nonfinite:
                        check_losses(host)
                        if not _all_finite((params, opt_state)):
                            nonfinite(step, "parameters or optimizer state not finite")
                    # The rate in force: the one that produced this checkpoint's last update.
                    store.save(step, params, opt_state,
                               {"epoch": step / steps_per_epoch,
                                "learning_rate": float(schedule(step - 1)),
                                "eval_accuracy": eval_metrics.get("accuracy") if epoch_end else None,
                                "log_window": {k: [float(h[k]) for h in host] for k in (host[0] if host else ())}})
                    last_checkpoint = step
                if crash_after_step is not None and step >= crash_after_step:
                    raise SimulatedCrash(f"simulated crash after step {step}")
                if step >= total_steps:
                    break
        if bar is not None:
            bar.close()
            bar = None
        if not eval_metrics:
            eval_metrics = evaluate(setup.model, state.params, setup.eval, int(train_cfg.eval_batch_size), mesh)
        infos = store.infos()
    finally:
        if bar is not None:
            bar.close()
        store.close()
    atomic_write_json(workdir / "train_summary.json", {
        "final_step": step, "eval": eval_metrics,
        "checkpoints": [{"step": c.step, "learning_rate": c.learning_rate, "epoch": c.epoch} for c in infos],
    })
    return TrainResult(workdir=workdir, final_step=step, checkpoints=infos, eval_metrics=eval_metrics,
                       resumed_from=resumed_from)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
