"""MNLI scale on one machine: TracIn-WE-topk retrieval over a store the size of MNLI's
training set, through the command line, on one process and split over N processes.

Writes, with the real store writer (``GradientStoreWriter``, sha256 per file), a training
store of ``--train`` examples (default 392,702: MNLI's training set) × ``--k`` token slots
(default 10) × ``--dim`` (default 768: BERT-base), vectors in ``--dtype`` (default
bfloat16, the ``grads`` default), tokens as ``tools/bench_kernel.py`` makes them ([CLS] and
[SEP] in every example, the other words Zipf-distributed over BERT's 30,522-token
vocabulary), and a test store of ``--test`` points (default 1,000). Then it times, each in
its own ``tracin-jax`` process (wall time and peak memory of that process):

1. ``single``: ``tracin-jax score --method tracin_we_topk --top T --part 0/1``: the
   retrieval alone (stream every shard, score it against every test point, keep the
   running top-T proponents and opponents), one process;
2. ``parts``: ``--part I/N`` for I = 0..N-1 as N concurrent processes (what N hosts of a
   pod or N SLURM tasks run), wall time = the slowest;
3. ``merge``: ``--merge`` of the N parts into the outputs (rankings, JSONL, report), and
   ``--merge`` of the single part the same way: the two outputs must hold identical
   rankings (``parts_identical``; exit code 1 otherwise).

Peak memory of each process is sampled from ``/proc/PID/status`` every 0.2 s:
``peak_rss_mb`` (all resident pages, including memory-mapped store files being read) and
``peak_anon_mb`` (the process's own memory: what retrieval holds). ``bound_mb`` is what
the design promises to stay near: the training shards in flight plus the test store (as float32)
plus the [test, shard] score block, on top of the interpreter and JAX.

The last line printed is one JSON object (``pairs_per_s`` = train × test / retrieval time).

    python tools/bench_scale.py                               # MNLI size: 6 GB store (bf16), ~20-40 min on 2 cores
    python tools/bench_scale.py --train 20000 --test 100      # quick
    python tools/bench_scale.py --workdir /big/disk --keep    # keep the stores for reruns
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bench  # noqa: E402
import bench_kernel  # noqa: E402

from tracin_jax.rankings import Rankings  # noqa: E402
from tracin_jax.store import GradientStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _status_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of a live process, MiB; (nan, nan) once it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    values[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return values.get("VmRSS", float("nan")), values.get("RssAnon", float("nan"))


def run_processes(commands: list[list[str]], log_dir: Path, name: str) -> dict:
    """Runs the commands concurrently; wall time of the slowest, each one's peak memory."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    procs = []
    for i, cmd in enumerate(commands):
        log = open(log_dir / f"{name}-{i}.log", "w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    peaks = [[0.0, 0.0] for _ in procs]
    done = threading.Event()

    def sample():
        while not done.is_set():
            for i, (p, _) in enumerate(procs):
                rss, anon = _status_mb(p.pid)
                if rss == rss:
                    peaks[i][0] = max(peaks[i][0], rss)
                if anon == anon:
                    peaks[i][1] = max(peaks[i][1], anon)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    codes = [p.wait() for p, _ in procs]
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    for (_, log), code, i in zip(procs, codes, range(len(procs))):
        log.close()
        if code != 0:
            tail = (log_dir / f"{name}-{i}.log").read_text()[-2000:]
            raise SystemExit(f"{' '.join(commands[i])} exited with {code}:\n{tail}")
    return {"wall_s": wall, "peak_rss_mb": [round(p[0], 1) for p in peaks],
            "peak_anon_mb": [round(p[1], 1) for p in peaks]}


def score_cmd(args, test: Path, train: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tracin_jax.cli", "score", "--method", "tracin_we_topk",
            "--test", str(test), "--train", str(train), "--top", str(args.top), "--no-progress", *extra]


def identical(a: Rankings, b: Rankings) -> bool:
    """Same test points, same proponents and opponents in the same order, same scores."""
    if not np.array_equal(a.test_ids, b.test_ids):
        return False
    return all(np.array_equal(getattr(x, f), getattr(y, f))
               for x, y in ((a.proponents, b.proponents), (a.opponents, b.opponents))
               for f in ("ids", "scores"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=392_702, help="training examples (MNLI: 392,702)")
    parser.add_argument("--test", type=int, default=1000, help="test points")
    parser.add_argument("--k", type=int, default=10, help="token slots per example (top-k)")
    parser.add_argument("--dim", type=int, default=768, help="word-embedding width (BERT-base: 768)")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of word frequencies")
    parser.add_argument("--shard-size", type=int, default=1024, help="examples per store shard")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                        help="store dtype of the vectors")
    parser.add_argument("--top", type=int, default=100, help="proponents/opponents kept per test point")
    parser.add_argument("--parts", type=int, default=2, help="N processes of the split run")
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the stores (a rerun reuses them)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"train": args.train, "test": args.test, "k": args.k, "dim": args.dim, "dtype": args.dtype,
              "top": args.top, "shard_size": args.shard_size, "load_avg_start": os.getloadavg()[0]}
    try:
        stores = {}
        for split, n, seed in (("train", args.train, args.seed), ("test", args.test, args.seed + 1)):
            directory = work / f"{split}_{n}_{args.k}_{args.dim}_{args.dtype}"
            try:
                stores[split] = GradientStore(directory)
                print(f"reusing {directory}", flush=True)
            except Exception:
                shutil.rmtree(directory, ignore_errors=True)
                start = time.perf_counter()
                stores[split] = bench_kernel.write_store(directory, n, seed, args, dtype=args.dtype)
                result[f"write_{split}_s"] = round(time.perf_counter() - start, 1)
                print(f"wrote {directory} in {result[f'write_{split}_s']} s", flush=True)
        train_dir, test_dir = stores["train"].directory, stores["test"].directory
        result["train_store_gb"] = round(bench_kernel.bytes_on_disk(Path(train_dir)) / 1e9, 3)
        result["test_store_mb"] = round(bench_kernel.bytes_on_disk(Path(test_dir)) / 1e6, 1)
        shard_bytes = args.shard_size * args.k * args.dim * 4  # as float32 once read
        # shards in flight: two scored by the retrieval threads, one read ahead; a score block each
        result["bound_mb"] = round((3 * shard_bytes + args.test * args.k * args.dim * 4
                                    + 2 * args.test * args.shard_size * 4) / 2**20, 1)
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        outs = work / "out"
        shutil.rmtree(outs, ignore_errors=True)

        single = run_processes([score_cmd(args, test_dir, train_dir, "--part", "0/1", "--out", str(outs / "single"))],
                               logs, "single")
        result["single"] = single
        result["pairs_per_s"] = round(args.train * args.test / single["wall_s"])
        print(f"single process: {single}", flush=True)

        n = args.parts
        parts = run_processes([score_cmd(args, test_dir, train_dir, "--part", f"{i}/{n}", "--out", str(outs / "parts"))
                               for i in range(n)], logs, "parts")
        result["parts"] = {**parts, "n": n}
        result["parts_speedup"] = round(single["wall_s"] / parts["wall_s"], 3)
        print(f"{n} processes: {parts}", flush=True)

        merged = {}
        for name, files in (("single", [outs / "single" / "part-0-of-1.npz"]),
                            ("parts", [outs / "parts" / f"part-{i}-of-{n}.npz" for i in range(n)])):
            result[f"merge_{name}"] = run_processes(
                [score_cmd(args, test_dir, train_dir, "--merge", *map(str, files), "--out", str(outs / f"merged_{name}"))],
                logs, f"merge_{name}")
            merged[name] = Rankings.load(outs / f"merged_{name}" / "retrieval.npz")
        result["parts_identical"] = identical(merged["single"], merged["parts"])
        jsonl = [(outs / f"merged_{name}" / "scores.jsonl").read_bytes() for name in ("single", "parts")]
        result["jsonl_identical"] = jsonl[0] == jsonl[1]
        result["jsonl_lines"] = jsonl[0].count(b"\n")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:
            shutil.rmtree(work / "out", ignore_errors=True)
    result["load_avg_end"] = os.getloadavg()[0]
    result["peak_rss_mb"] = bench.max_rss_mb()
    print(json.dumps(result))
    if not (result["parts_identical"] and result["jsonl_identical"]):
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
