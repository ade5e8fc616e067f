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

``--end-to-end`` times real ``tracin-jax sweep run`` jobs instead (``end_to_end``): it plans
a small sweep of the same model and data in a temporary directory (an untrained run
directory: a sweep retrains from the run's initial state), with full-data jobs (the
baselines, and removals of ``--remove`` examples) and as many LDS jobs at α = 0.5 (half the
training set, so half the steps), in the order full, half, full, half, ..., runs it with the
real runner (``deletion.runner.run_sweep``, one job at a time), and reads each job's wall time
(from the time its result file was written to the next one's: setup, placement, initial
state, compilation, training, evaluation and result writing) and the runner's own split
(``timing`` in each result: training steps, compilation, evaluation). The first job of each
kind compiles its programs (once per worker, not per job) and is left out of the steady
state. The last line holds ``train_step_fraction`` (the steady-state jobs' time in training
steps over their wall time; target >= 0.8) and ``half_steps_time_ratio`` (median wall time of
an α = 0.5 job over a full one; target <= 0.6, ideal 0.5).

    python tools/bench_retrain.py --end-to-end                 # synthetic data, 5,000 examples
    python tools/bench_retrain.py --end-to-end --sst2 DATA/sst2   # SST-2: 5,000 sentences, all of dev

Measured on a shared 2-core CPU (157 / 79 steps, 872 examples evaluated per job):
train_step_fraction 0.91 (full jobs 0.93, α = 0.5 jobs 0.87) and half_steps_time_ratio 0.55
on synthetic data and on SST-2, one compilation (5-7 s) per worker. The same mode on the
engine of commit 4904143 (``PYTHONPATH=<its worktree>``): ratio 0.96 (an α = 0.5 job ran the
full job's idle slots); on a836ab3: 0.59, with three programs compiled (46 s).
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
        cfg.data.max_train, cfg.data.max_eval = args.num_train, args.num_eval
        data = f"sst2:{args.num_train}"
    else:
        cfg.data.source = "synthetic"
        cfg.data.synthetic.num_train = args.num_train
        cfg.data.synthetic.num_eval = args.num_eval
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


def end_to_end(args) -> dict:
    """Real ``sweep run`` jobs, full-data and α = 0.5, timed end to end (module docstring).

    Uses only what ``tracin-jax sweep plan/run`` use (``plan_sweep``, ``run_sweep``, result
    files), so it also times older versions of the package (their results may lack the
    runner's ``timing`` split: then only wall times are reported).
    """
    import shutil
    import tempfile

    from tracin_jax.deletion.plan import plan_sweep
    from tracin_jax.deletion.runner import run_sweep
    from tracin_jax.train import prepare_run
    try:
        from tracin_jax.rankings import Rankings
    except ImportError:  # versions before the rankings artifact moved
        from tracin_jax.deletion.rankings import Rankings

    cfg, data = bench_config(args)
    work = Path(tempfile.mkdtemp(prefix="bench_retrain_e2e_"))
    try:
        run_dir, sweep_dir = work / "run", work / "sweep"
        setup = prepare_run(cfg, run_dir)  # config + tokenizer: what sweep run loads
        jobs = int(args.jobs)
        sweep = cfg.sweep
        sweep.methods, sweep.signs, sweep.k_grid = ("random",), ("+",), (int(args.remove),)
        sweep.seeds = tuple(range(1, jobs + 1))
        sweep.lds.num_subsets, sweep.lds.alpha = 2 * jobs, 0.5
        sweep.fix.num_points, sweep.replicas, sweep.num_devices = 0, 1, 1
        # One test point, "ranked" at random: jobs*(baseline + removal of --remove) full-data jobs.
        rng = np.random.default_rng(0)
        picks = rng.choice(np.asarray(setup.train.ids), size=(1, 2 * int(args.remove)), replace=False)
        rankings = {"random": Rankings.from_ids("random", np.asarray(setup.eval.ids)[:1],
                                                np.asarray(setup.eval.labels)[:1],
                                                picks[:, :args.remove], picks[:, args.remove:])}
        manifest = plan_sweep(setup, run_dir, rankings, sweep)
        full = [j for j in manifest["jobs"] if not j.get("subset")]
        half = [j for j in manifest["jobs"] if j.get("subset")]
        manifest["jobs"] = [j for pair in zip(full, half) for j in pair]  # full, half, full, half, ...
        kind = {j["id"]: "half" if j.get("subset") else "full" for j in manifest["jobs"]}
        sweep_dir.mkdir(parents=True)
        (sweep_dir / "manifest.json").write_text(json.dumps(manifest))
        del setup  # the worker loads the run itself, as sweep run does

        t_start = time.time()
        run_sweep(sweep_dir, replicas=1, progress=False, echo=None)
        t_end = time.time()
        records = []
        for path in (sweep_dir / "results").glob("*.json"):
            result = json.loads(path.read_text())
            records.append((path.stat().st_mtime, result))
        if len(records) != len(manifest["jobs"]):
            raise RuntimeError(f"{len(records)} results for {len(manifest['jobs'])} jobs")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    records.sort(key=lambda r: r[0])
    rows, previous, seen = [], t_start, set()
    for finished, result in records:
        timing = result.get("timing") or {}
        k = kind[result["id"]]
        rows.append({"kind": k, "steps": int(result["steps"]), "wall_s": finished - previous,
                     "train_steps_s": timing.get("train_steps_s"), "compile_s": timing.get("compile_s"),
                     "eval_s": timing.get("eval_s"), "job_s": float(result["wall_time_s"]),
                     "warmup": k not in seen})
        seen.add(k)
        previous = finished
    for row in rows:
        print(f"{row['kind']:>4} job: {row['steps']:4d} steps, {row['wall_s']:6.2f} s wall"
              + (f", {row['train_steps_s']:6.2f} s training steps, {row['compile_s']:5.2f} s compiling, "
                 f"{row['eval_s']:5.2f} s evaluating" if row["train_steps_s"] is not None else "")
              + (" (first of its kind: compiles)" if row["warmup"] else ""), file=sys.stderr)
    steady = [r for r in rows if not r["warmup"]]

    def med(kind_, key):
        return float(np.median([r[key] for r in steady if r["kind"] == kind_]))

    def fraction(selected):
        if not selected or any(r["train_steps_s"] is None for r in selected):
            return None
        return sum(r["train_steps_s"] for r in selected) / sum(r["wall_s"] for r in selected)

    timed = all(r["train_steps_s"] is not None for r in rows)
    first = rows[0]
    results = {
        "bench": "retrain_end_to_end", "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform, "model": "bert L2 H128 A2 I512", "data": data,
        "evaluated_per_job": len(manifest["eval_points"]) + len(manifest["heldout_rows"]),
        "max_length": int(cfg.tokenizer.max_length), "batch_size": int(cfg.train.batch_size),
        "epochs": int(manifest["epochs"]), "jobs_full": sum(r["kind"] == "full" for r in rows),
        "jobs_half": sum(r["kind"] == "half" for r in rows), "steady_jobs": len(steady),
        "full_steps": int(np.median([r["steps"] for r in rows if r["kind"] == "full"])),
        "half_steps": int(np.median([r["steps"] for r in rows if r["kind"] == "half"])),
        "full_job_s": med("full", "wall_s"), "half_job_s": med("half", "wall_s"),
        "total_s": t_end - t_start,
        # before the first job: loading the run, the trainer, the first group's claims
        "worker_setup_s": first["wall_s"] - first["job_s"],
        "first_jobs_compile_s": (sum(r["compile_s"] for r in rows if r["warmup"]) if timed else None),
        "train_step_fraction_full": fraction([r for r in steady if r["kind"] == "full"]),
        "train_step_fraction_half": fraction([r for r in steady if r["kind"] == "half"]),
        "train_step_fraction": fraction(steady),
        "half_steps_train_ratio": (med("half", "train_steps_s") / med("full", "train_steps_s") if timed else None),
        "half_steps_time_ratio": med("half", "wall_s") / med("full", "wall_s"),
        "target": "train_step_fraction >= 0.8, half_steps_time_ratio <= 0.6",
    }
    results["meets_target"] = bool(results["train_step_fraction"] is not None
                                   and results["train_step_fraction"] >= 0.8
                                   and results["half_steps_time_ratio"] <= 0.6)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=None, help="R (default: 8 on CPU, 64 on GPU/TPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps timed per retraining (default: 24 on CPU, one epoch elsewhere)")
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--num-eval", type=int, default=None,
                        help="evaluation examples (default 200; with --end-to-end 872, SST-2's dev size)")
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
    parser.add_argument("--end-to-end", action="store_true",
                        help="time real sweep run jobs, full-data and alpha=0.5 (module docstring)")
    parser.add_argument("--jobs", type=int, default=3,
                        help="with --end-to-end: seeds; 2x this many full-data and as many alpha=0.5 jobs")
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

    if args.num_eval is None:
        args.num_eval = 872 if args.end_to_end else 200
    if args.end_to_end:
        if args.config:
            parser.error("--end-to-end benches the BERT L2-H128 sweep (no --config)")
        print(json.dumps(end_to_end(args)))
        return 0

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
