"""Benchmark: retrainings per hour, R replicas vmapped vs the same R run one after another.

Model: BERT, 2 layers, hidden 128 (the paper's BERT-tiny shape), trained from scratch.
Data: with ``--sst2 DIR`` (a directory holding SST-2's ``train.csv`` and ``dev.csv``, columns
``text,label``) a 5,000-example subset of SST-2 (word tokenizer built on it); without it,
the synthetic corpus with 5,000 training examples.

Each of the R retrainings has its own seed and removes its own 20 random examples
(case deletion). The ways to run them, timed after compilation on the same steps,
interleaved ``--repeats`` times (best kept; this machine is shared):

- engine:     ``ReplicaTrainer.train`` on all R (what ``tracin-jax sweep run`` does). It
              vmaps ``vmap_width`` replicas per device: all R on a GPU/TPU; on one CPU
              device width 1, i.e. the replicas one after another through the
              one-replica program (XLA:CPU's batched GEMMs of a vmapped BERT step are
              slower than plain ones, and so is a loop over replicas inside the program);
- full_vmap:  the engine with width R (one vmapped program) — on CPU for reference;
- sequential_trainer_loop: the R runs one after another with the trainer's own loop
              (one jitted step per batch, host batches from ``iterate_batches``);
- sequential_scan1: the R runs one after another, each a one-replica engine call.

- grouped_trimmed: the engine with ``train.group_by_length=G`` and ``train.pad_to_multiple=m``
              (batches of similar length, each padded only to its longest text); timed
              over whole megabatches (at least G steps), compared per step.

``replica_speedup`` = (faster sequential way) / engine; ``speedup_vs_trainer_loop``,
``full_vmap_speedup`` and ``grouped_trimmed_speedup`` (per-step time of the engine / of
grouped_trimmed) as named. A retraining is ``epochs · ceil(N / B)`` steps;
``--steps`` measures fewer and extrapolates per step.
The last line printed is one JSON object.

    python tools/bench_retrain.py                 # CPU defaults: R=8, 24 steps, synthetic data
    python tools/bench_retrain.py --sst2 DATA/sst2   # the same on SST-2 (README's numbers)
    python tools/bench_retrain.py --config configs/sst2_minilm.py --replicas 2 \
        --config.data.max_train=5000 --config.tokenizer.max_length=48   # any experiment's model
    python tools/bench_retrain.py --replicas 64 --steps 157   # a GPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

SST2_FILES = ("train.csv", "dev.csv")  # what --sst2 DIR must hold


def bench_config(args):
    if args.config:  # an experiment's config with its overrides; --num-train etc. are ignored
        from tracin_jax import config as config_lib

        cfg = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
        cfg.train.epochs, cfg.train.num_devices = 1, 1
        cfg.train.group_by_length, cfg.train.pad_to_multiple = 0, 0  # the plain engine way
        source = cfg.data.get("name") or cfg.data.source
        return cfg, f"{source}:{cfg.data.max_train or 'all'}"
    from tracin_jax.config import base_config

    cfg = base_config()
    cfg.name = "bench_retrain"
    if args.sst2 and not args.synthetic:
        sst2 = Path(args.sst2)
        cfg.data.source = "csv"
        cfg.data.files = {"train": str(sst2 / "train.csv"), "validation": str(sst2 / "dev.csv")}
        cfg.data.train_split, cfg.data.eval_split = "train", "validation"
        cfg.data.text_field, cfg.data.label_field = "text", "label"
        cfg.data.label_names = ("negative", "positive")
        cfg.data.max_train, cfg.data.max_eval = args.num_train, 200
        data = f"sst2:{args.num_train}"
    else:
        cfg.data.source = "synthetic"
        cfg.data.synthetic.num_train = args.num_train
        cfg.data.synthetic.num_eval = 200
        data = f"synthetic:{args.num_train}"
    cfg.tokenizer.kind = "word"
    cfg.tokenizer.vocab_size = 5000
    cfg.tokenizer.max_length = args.max_length
    cfg.model.kind = "bert"
    cfg.model.hidden_size = 128
    cfg.model.num_hidden_layers = 2
    cfg.model.num_attention_heads = 2
    cfg.model.intermediate_size = 512
    cfg.model.max_position_embeddings = max(args.max_length, 64)
    cfg.train.optimizer = "sgd"  # the paper's: SGD with momentum 0.9
    cfg.train.lr = 2e-2
    cfg.train.batch_size = args.batch_size
    cfg.train.epochs = 1
    cfg.train.num_devices = 1
    return cfg, data


def engine_way(setup, specs, steps: int, vmap_width: int):
    """All R retrainings in one ReplicaTrainer program (``vmap_width`` 0 = the engine's default)."""
    from tracin_jax.deletion.replicas import ReplicaTrainer

    setup.cfg.train.max_steps = steps
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, steps_per_call=steps,
                             vmap_width=vmap_width)
    jax.block_until_ready(trainer.train(specs).params)  # compile

    def measure() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(trainer.train(specs).params)
        return time.perf_counter() - t0
    return measure


def grouped_trimmed_way(setup, specs, steps: int, group: int, multiple: int):
    """The engine on a copy of the run whose batches are length-grouped and trimmed."""
    import dataclasses
    import ml_collections

    cfg = ml_collections.ConfigDict(setup.cfg.to_dict())
    cfg.train.group_by_length, cfg.train.pad_to_multiple = group, multiple
    return engine_way(dataclasses.replace(setup, cfg=cfg), specs, steps, 0)


def scan1_way(setup, specs, steps: int):
    """The R retrainings one after another, each its own one-replica program call."""
    from tracin_jax.deletion.replicas import ReplicaTrainer

    setup.cfg.train.max_steps = steps
    trainer = ReplicaTrainer(setup.cfg, setup.model, setup.train, steps_per_call=steps)
    jax.block_until_ready(trainer.train(specs[:1]).params)  # compile

    def measure() -> float:
        t0 = time.perf_counter()
        for spec in specs:
            jax.block_until_ready(trainer.train([spec]).params)
        return time.perf_counter() - t0
    return measure


def trainer_loop_way(setup, specs, steps: int):
    """The trainer's loop (as ``train``: one jitted step per batch, host batches from
    ``iterate_batches``), one run after another; compiled once for all runs (seed and
    schedule length are arguments), no checkpoints."""
    import jax.numpy as jnp
    from tracin_jax import mesh as mesh_lib
    from tracin_jax.data import iterate_batches
    from tracin_jax.deletion.replicas import initial_params
    from tracin_jax.train import TrainState, make_optimizer
    from tracin_jax.train.trainer import apply_train_step, schedule_value

    cfg = setup.cfg
    mesh = mesh_lib.make_mesh(1)
    keys = ("input_ids", "attention_mask", "token_type_ids", "labels", "weights")
    bs = int(cfg.train.batch_size)
    params0 = {s.seed: initial_params(cfg, setup.model, s.seed) for s in specs}

    def step(state, batch, seed, total):
        tx = make_optimizer(cfg.train, lambda c: schedule_value(cfg.train, c, total), state.params)
        key = jax.random.fold_in(jax.random.key(seed), state.step)
        return apply_train_step(setup.model, tx, state, batch, key)[0]

    step_fn = jax.jit(step, donate_argnums=(0,))

    def run(spec, n_steps):
        tx = make_optimizer(cfg.train, lambda c: 0.0, params0[spec.seed])
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params0[spec.seed],
                           opt_state=tx.init(params0[spec.seed]))
        state = mesh_lib.replicate(jax.tree.map(np.array, jax.device_get(state)), mesh)
        seed, total = jnp.int32(spec.seed), jnp.int32(n_steps)
        done, epoch = 0, 0
        while done < n_steps:
            for batch in iterate_batches(setup.train, bs, seed=spec.seed, epoch=epoch, keep=spec.keep):
                state = step_fn(state, mesh_lib.shard_batch({k: batch[k] for k in keys}, mesh), seed, total)
                done += 1
                if done == n_steps:
                    break
            epoch += 1
        jax.block_until_ready(state.params)

    run(specs[0], 2)  # compile

    def measure() -> float:
        t0 = time.perf_counter()
        for spec in specs:
            run(spec, steps)
        return time.perf_counter() - t0
    return measure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=None, help="R (default: 8 on CPU, 64 on GPU/TPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps timed per retraining (default: 24 on CPU, one epoch elsewhere)")
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--max-length", type=int, default=64, help="SST-2 sentences are short")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--remove", type=int, default=20, help="examples removed per retraining")
    parser.add_argument("--sst2", default=None, metavar="DIR",
                        help="SST-2 directory with train.csv and dev.csv (text,label); default: synthetic data")
    parser.add_argument("--synthetic", action="store_true", help="synthetic data even with --sst2")
    parser.add_argument("--skip-scan1", action="store_true", help="skip the R=1 scan baseline")
    parser.add_argument("--repeats", type=int, default=3, help="time each way this often, keep the best")
    parser.add_argument("--group-by-length", type=int, default=50,
                        help="G of the grouped_trimmed way (0 skips it)")
    parser.add_argument("--pad-to-multiple", type=int, default=8, help="m of the grouped_trimmed way")
    parser.add_argument("--config", default=None,
                        help="bench this experiment config's model and data instead (--config.KEY=V overrides)")
    args, rest = parser.parse_known_args(argv)
    args.overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
    if len(args.overrides) != len(rest):
        parser.error(f"unrecognized arguments: {[a for a in rest if not a.startswith('--config.')]}")
    if args.sst2 and not args.synthetic and not args.config:
        missing = [f for f in SST2_FILES if not (Path(args.sst2) / f).is_file()]
        if missing:
            parser.error(f"--sst2 {args.sst2}: {', '.join(missing)} not found there")

    from tracin_jax.deletion.replicas import ReplicaSpec
    from tracin_jax.train import prepare_run

    platform = jax.devices()[0].platform
    replicas = args.replicas or (8 if platform == "cpu" else 64)
    cfg, data = bench_config(args)
    setup = prepare_run(cfg, None)
    n = len(setup.train)
    batch_size = int(cfg.train.batch_size)
    steps_per_retrain = int(cfg.train.epochs) * math.ceil((n - args.remove) / batch_size)
    steps = args.steps or (24 if platform == "cpu" else steps_per_retrain)
    rng = np.random.default_rng(0)
    specs = []
    for r in range(replicas):
        keep = np.ones(n, bool)
        keep[rng.choice(n, args.remove, replace=False)] = False
        specs.append(ReplicaSpec(seed=r, keep=keep))

    from tracin_jax.deletion.replicas import ReplicaTrainer
    default_width = ReplicaTrainer(setup.cfg, setup.model, setup.train).vmap_width_for(replicas)
    ways = {"engine": engine_way(setup, specs, steps, 0),
            "sequential_trainer_loop": trainer_loop_way(setup, specs, steps)}
    if default_width != replicas:  # else the engine's default already vmaps every replica
        ways["full_vmap"] = engine_way(setup, specs, steps, replicas)
    if not args.skip_scan1:
        ways["sequential_scan1"] = scan1_way(setup, specs, steps)
    grouped_steps = max(steps, args.group_by_length * math.ceil(steps / max(args.group_by_length, 1)))
    if args.group_by_length:
        ways["grouped_trimmed"] = grouped_trimmed_way(setup, specs, grouped_steps, args.group_by_length,
                                                      args.pad_to_multiple)
    samples = {name: [] for name in ways}
    for _ in range(args.repeats):  # interleaved, so a busy machine slows every way alike
        for name, fn in ways.items():
            samples[name].append(fn())
            n_steps = grouped_steps if name == "grouped_trimmed" else steps
            print(f"{name}: {samples[name][-1]:.2f} s for {replicas} x {n_steps} steps", file=sys.stderr)
    timings = {name: min(v) for name, v in samples.items()}
    if "full_vmap" not in timings:
        timings["full_vmap"] = timings["engine"]
    t_seq = min(timings[k] for k in ("sequential_trainer_loop", "sequential_scan1") if k in timings)

    def per_hour(total_s):
        return 3600.0 / (total_s / steps * steps_per_retrain / replicas)

    results = {
        "bench": "retrain", "device": jax.devices()[0].device_kind, "platform": platform,
        "num_devices": 1, "model": (f"{cfg.name}: {cfg.model.kind}" if args.config else "bert L2 H128 A2 I512"),
        "data": data, "max_length": int(cfg.tokenizer.max_length), "batch_size": batch_size, "replicas": replicas,
        "engine_vmap_width": default_width, "removed_per_retrain": args.remove,
        "steps_timed": steps, "steps_per_retrain": steps_per_retrain,
        **{f"{k}_s": v for k, v in timings.items()},
        "retrains_per_hour": per_hour(timings["engine"]),
        "full_vmap_retrains_per_hour": per_hour(timings["full_vmap"]),
        "sequential_retrains_per_hour": per_hour(t_seq),
        "replica_speedup": t_seq / timings["engine"],
        "full_vmap_speedup": t_seq / timings["full_vmap"],
        "speedup_vs_trainer_loop": timings["sequential_trainer_loop"] / timings["engine"],
        "target": "replica_speedup >= 1.0 on CPU, >= 5 on GPU",
        **({"grouped_trimmed_steps": grouped_steps, "group_by_length": args.group_by_length,
            "pad_to_multiple": args.pad_to_multiple,
            "grouped_trimmed_retrains_per_hour": per_hour(timings["grouped_trimmed"] * steps / grouped_steps),
            "grouped_trimmed_speedup": (timings["engine"] / steps) / (timings["grouped_trimmed"] / grouped_steps)}
           if "grouped_trimmed" in timings else {}),
    }
    target = 1.0 if platform == "cpu" else 5.0
    results["meets_target"] = bool(results["replica_speedup"] >= target)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
