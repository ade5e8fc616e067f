"""Fine-tuning: a pure jitted train step, data-parallel over the device mesh.

The batch is sharded over the mesh's ``data`` axis and parameters are replicated;
``jax.jit`` partitions the step (the gradient all-reduce is inserted by XLA), so
the same code runs on 1 device, 8 fake CPU devices, a GPU box or a TPU pod slice.
Checkpoints record the learning rate in force (TracIn's eta_c) and the step;
a killed run restarts from its last checkpoint and reproduces the uninterrupted
run exactly (data order depends only on (seed, epoch), dropout only on (seed, step)).
"""
from __future__ import annotations

import json
import logging
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


@dataclass
class TrainResult:
    workdir: Path
    final_step: int
    checkpoints: list  # CheckpointInfo
    eval_metrics: dict[str, float]
    resumed_from: int | None


def train(cfg: ml_collections.ConfigDict, workdir: str | Path, *, setup: RunSetup | None = None,
          crash_after_step: int | None = None, progress: bool = True,
          keep: np.ndarray | None = None) -> TrainResult:
    """Fine-tunes ``cfg.model`` on ``cfg.data``, checkpointing into ``workdir/checkpoints``.

    Resumes from the latest checkpoint in ``workdir`` if there is one.
    ``crash_after_step`` raises :class:`SimulatedCrash` after that update (tests).
    ``keep`` (``[N]`` bool over the training set) trains without the False rows
    (case deletion, exact: see ``iterate_batches``); epochs count kept examples.
    """
    workdir = Path(workdir)
    setup = setup or prepare_run(cfg, workdir)
    train_cfg = cfg.train
    mesh = mesh_lib.make_mesh(train_cfg.num_devices)
    batch_size = int(train_cfg.batch_size)
    if batch_size % mesh.size:
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the {mesh.size} devices")
    n_kept = len(setup.train) if keep is None else int(np.count_nonzero(keep))
    steps_per_epoch = num_batches(n_kept, batch_size)
    total_steps = int(train_cfg.max_steps or int(train_cfg.epochs) * steps_per_epoch)
    schedule = make_schedule(train_cfg, total_steps)
    tx = make_optimizer(train_cfg, schedule, setup.params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=setup.params,
                       opt_state=tx.init(setup.params))

    store = CheckpointStore(workdir / "checkpoints")
    resumed_from = store.latest_step()
    if resumed_from is not None:
        params, opt_state, meta = store.restore(resumed_from, state.params, state.opt_state)
        state = TrainState(step=jnp.asarray(resumed_from, jnp.int32), params=params, opt_state=opt_state)
        log.info("resuming from checkpoint step %d (epoch %.2f)", resumed_from, meta.get("epoch", 0))
    # Fresh device buffers: the step donates its input state, and the caller's
    # setup.params must survive (it is reused by later stages).
    state = mesh_lib.replicate(jax.tree.map(np.array, jax.device_get(state)), mesh)
    step_fn = jax.jit(make_train_step(setup.model, tx, int(cfg.seed)), donate_argnums=(0,))

    start = int(state.step)
    metrics_path = workdir / "metrics.jsonl"
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    step, t0, history = start, time.time(), []
    eval_metrics: dict[str, float] = {}
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
                mean = {k: float(np.mean([float(h[k]) for h in history])) for k in history[0]}
                history.clear()
                if bar is not None:
                    bar.set_postfix(loss=f"{mean['loss']:.4f}", acc=f"{mean['accuracy']:.3f}")
                _append_jsonl(metrics_path, {"step": step, "epoch": step / steps_per_epoch,
                                             "train_loss": mean["loss"], "train_accuracy": mean["accuracy"],
                                             "elapsed_s": time.time() - t0})
            epoch_end = step % steps_per_epoch == 0 or step == total_steps
            if epoch_end:
                eval_metrics = evaluate(setup.model, state.params, setup.eval,
                                        int(train_cfg.eval_batch_size), mesh)
                _append_jsonl(metrics_path, {"step": step, "epoch": step / steps_per_epoch,
                                             **{f"eval_{k}": v for k, v in eval_metrics.items()}})
                log.info("step %d eval accuracy %.4f loss %.4f", step, eval_metrics["accuracy"],
                         eval_metrics["loss"])
            if checkpoint_due(step, steps_per_epoch, total_steps, train_cfg):
                # The rate in force: the one that produced this checkpoint's last update.
                store.save(step, jax.device_get(state.params), jax.device_get(state.opt_state),
                           {"epoch": step / steps_per_epoch,
                            "learning_rate": float(schedule(step - 1)),
                            "eval_accuracy": eval_metrics.get("accuracy") if epoch_end else None})
            if crash_after_step is not None and step >= crash_after_step:
                store.close()
                raise SimulatedCrash(f"simulated crash after step {step}")
            if step >= total_steps:
                break
    if bar is not None:
        bar.close()
    if not eval_metrics:
        eval_metrics = evaluate(setup.model, state.params, setup.eval, int(train_cfg.eval_batch_size), mesh)
    infos = store.infos()
    store.close()
    (workdir / "train_summary.json").write_text(json.dumps({
        "final_step": step, "eval": eval_metrics,
        "checkpoints": [{"step": c.step, "learning_rate": c.learning_rate, "epoch": c.epoch} for c in infos],
    }, indent=2))
    return TrainResult(workdir=workdir, final_step=step, checkpoints=infos, eval_metrics=eval_metrics,
                       resumed_from=resumed_from)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
