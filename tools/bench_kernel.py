"""Benchmark of TracIn-WE-topk retrieval over a gradient store (GitHub issue 4, item 7).

Writes a real training store (``--train`` examples, ``--k`` token slots of
dimension ``--dim`` each) and a test store (``--test`` examples) with
``GradientStoreWriter``; token statistics are realistic: [CLS] and [SEP] in every
example, the other tokens Zipf-distributed over a 30k vocabulary, repeats merged
as ``token_vectors`` merges them. Then, in one process:

- retrieval = ``methods.retrieval.top_k``: stream the training store shard by
  shard, score each shard against every test point, keep a running top-k of
  proponents and opponents. Timed with the sparse (inverted-index join) and the
  dense (masked GEMM) kernels and with the library's default method as it stands.
- ``pairs_per_s`` = train × test / retrieval time, default kernel
  (``default_backend()``: the sparse join on CPU, the dense GEMM on accelerators).
- ``speedup_vs_paper_loop``: the authors' notebook scores one pair at a time (a
  Python loop over shared token ids with numpy dot products); timed here on a
  subsample and extrapolated per pair.
- ``ratio_to_floor`` = retrieval time / max(time to read the training store once
  with ``GradientStore.iter_shards`` (every read field file sha256-checked through a
  memory map, as retrieval reads it), useful FLOPs at the GEMM rate measured here),
  useful FLOPs = 2·d per pair of matching tokens (the dense GEMM does 2·d·T·S per
  example pair, mostly on non-matching slots).

``--store-dtype bfloat16`` (or ``float16``) stores ``vectors`` in that dtype; all of the
above is then measured on that store, and the same data is also written as a float32
store and compared (scores are accumulated in float32 either way):

- ``bytes_on_disk``: training-store size of each; ``floor_ratio_vs_float32`` = read
  floor of the D store / read floor of the float32 store; ``float32``: its read
  floor, retrieval time and ``ratio_to_floor`` (default kernel);
- ``topk_overlap_vs_float32``: mean over test points of |top-k proponents (D) ∩
  top-k proponents (float32)| / k;
- ``spearman_vs_float32``: mean per test point of the Spearman correlation of the
  D and float32 scores over the union of both top-k proponent lists
  (``spearman_all_vs_float32``: over all training examples);
- ``max_rel_err_vs_float32``: max over all pairs |s_D − s_32| / max |s_32|.

The last line printed is one JSON object.

    python tools/bench_kernel.py                    # 50,000 x 100, d = 768 (~1 min on 2 CPU cores)
    python tools/bench_kernel.py --train 5000       # quick
    python tools/bench_kernel.py --store-dtype bfloat16 --backends sparse
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bench  # noqa: E402

from tracin_jax.kernels.pair_scores import default_backend, pair_scores_dense, pair_scores_sparse  # noqa: E402
from tracin_jax.methods.retrieval import top_k  # noqa: E402
from tracin_jax.methods.tracin_we import TracInWETopK  # noqa: E402
from tracin_jax.store import GradientStore, GradientStoreWriter  # noqa: E402

PAD_ID = -1
STEP, LEARNING_RATE = 0, 1.0
# The two pair-score kernels by name (production picks one with default_backend()).
KERNELS = {"sparse": pair_scores_sparse,
           "dense": jax.jit(pair_scores_dense, static_argnames=("block_size",))}


def pair_scores(a_ids, a_vecs, b_ids, b_vecs, backend: str):
    return KERNELS[backend](a_ids, a_vecs, b_ids, b_vecs)


_TIMER_LOCK = threading.Lock()


class KernelTracInWETopK(TracInWETopK):
    """``tracin_we_topk`` scored with a chosen ``pair_scores`` backend; times its kernel calls."""

    def __init__(self, k: int, backend: str):
        super().__init__(k=k)
        self.backend = backend
        self._timer = [0.0]  # a list, so copies made by prepare() (bound methods) share it

    @property
    def kernel_seconds(self) -> float:
        return self._timer[0]

    def score_block(self, test, train, step, mesh=None):
        start = time.perf_counter()
        if self.backend == default_backend():  # the library's own path (test side prepared once)
            scores = super().score_block(test, train, step, mesh)
        else:
            a, b = self.inputs(test, step, "test"), self.inputs(train, step, "train")
            scores = np.asarray(pair_scores(a["token_ids"], a["vectors"], b["token_ids"],
                                            b["vectors"], backend=self.backend), np.float32)
        with _TIMER_LOCK:  # retrieval may score two shards at once (threads): kernel_s sums both
            self._timer[0] += time.perf_counter() - start
        return scores


def token_slots(rng: np.random.Generator, rows: int, k: int, vocab: int, zipf: float) -> np.ndarray:
    """[rows, k] token ids as the store holds them: [CLS], words, [SEP]; repeats merged, -1 padded."""
    raw = np.concatenate([np.full((rows, 1), bench.CLS_ID, np.int32),
                          bench.zipf_token_ids(rng, rows, k - 2, vocab, zipf),
                          np.full((rows, 1), bench.SEP_ID, np.int32)], axis=1)
    ids = np.full_like(raw, PAD_ID)
    for r, row in enumerate(raw):
        unique = np.unique(row, return_index=True)[1]  # first occurrences, in slot order
        ids[r, :unique.size] = row[np.sort(unique)]
    return ids


def records(rng: np.random.Generator, first_id: int, rows: int, args) -> dict[str, np.ndarray]:
    ids = token_slots(rng, rows, args.k, args.vocab, args.zipf)
    vectors = rng.standard_normal((rows, args.k, args.dim), np.float32) / np.sqrt(args.dim)
    vectors[ids == PAD_ID] = 0.0
    return {"example_id": np.arange(first_id, first_id + rows, dtype=np.int64),
            "label": rng.integers(0, 2, rows).astype(np.int32), "token_ids": ids,
            "vectors": vectors, "features": np.zeros((rows, 1), np.float32),
            "p_minus_y": np.zeros((rows, 2), np.float32), "loss": np.zeros(rows, np.float32),
            "prediction": np.zeros(rows, np.int32)}


def write_store(directory: Path, num_examples: int, seed: int, args,
                dtype: str = "float32") -> GradientStore:
    """A finalized store of synthetic records (float32 vectors, cast by the writer to `dtype`)."""
    writer = GradientStoreWriter(directory, num_examples=num_examples, shard_size=args.shard_size,
                                 k=args.k, dtype=dtype, model_info={"bench": "kernel"},
                                 fingerprint=f"bench-{seed}", split=directory.name)
    writer.begin_checkpoint(STEP, LEARNING_RATE)
    for shard in range(writer.num_shards):
        start, stop = writer.shard_range(shard)
        writer.write_shard(STEP, shard, records(np.random.default_rng([seed, shard]), start,
                                                stop - start, args))
    writer.finalize()
    return GradientStore(directory)


def paper_pair_score(ids1, vecs1, ids2, vecs2) -> float:
    """One pair, the notebook's way: shared ids as Python sets, numpy per token, top-5 kept."""
    total, top = 0.0, [(-1.0, 0)] * 5
    for token in set(ids1.tolist()) & set(ids2.tolist()):
        if token == PAD_ID:
            continue
        add = float(np.sum(np.sum(vecs1[ids1 == token], axis=0) * np.sum(vecs2[ids2 == token], axis=0)))
        top.append((abs(add), token))
        top.sort(reverse=True)
        top.pop()
        total += add
    return total


def float32_vectors(block: dict) -> dict:
    """token_ids and float32 vectors (the notebook loop sums in numpy's dtype of its input)."""
    return {"token_ids": block["token_ids"], "vectors": np.asarray(block["vectors"], np.float32)}


def paper_loop_seconds_per_pair(test: dict, train: dict, num_test: int, num_train: int):
    """Seconds per pair of the notebook loop on a subsample, and its scores."""
    scores = np.zeros((num_test, num_train))
    start = time.perf_counter()
    for i in range(num_test):
        for j in range(num_train):
            scores[i, j] = paper_pair_score(test["token_ids"][i], test["vectors"][i],
                                            train["token_ids"][j], train["vectors"][j])
    return (time.perf_counter() - start) / (num_test * num_train), scores


def gemm_gflops(dim: int, size: int = 1024, reps: int = 5) -> dict[str, float]:
    """Best float32 GEMM rate of this process: numpy (1 and all BLAS threads) and XLA."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((size, dim), np.float32)
    y = rng.standard_normal((size, dim), np.float32)
    flops = 2.0 * size * size * dim
    rates = {}

    def best(fn):
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
        return flops / min(times) / 1e9

    rates["numpy"] = best(lambda: x @ y.T)
    try:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(1, user_api="blas"):
            rates["numpy_1_thread"] = best(lambda: x @ y.T)
    except ImportError:
        pass
    matmul = jax.jit(lambda a, b: jax.lax.dot_general(
        a, b, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST))
    xd, yd = jax.device_put(x), jax.device_put(y)
    rates["xla"] = best(lambda: matmul(xd, yd))
    return rates


def useful_flops(test_ids: np.ndarray, train: GradientStore, dim: int) -> tuple[float, float]:
    """2·d·(matching token pairs over all example pairs), and matches per example pair."""
    counts = np.bincount(test_ids[test_ids != PAD_ID])
    matches = 0
    for shard in train.iter_shards(STEP, fields=("token_ids",)):
        ids = shard["token_ids"][shard["token_ids"] != PAD_ID]
        ids = ids[ids < counts.size]
        matches += int(counts[ids].sum())
    pairs = len(test_ids) * train.num_examples
    return 2.0 * dim * matches, matches / pairs


def bytes_on_disk(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def time_read(store: GradientStore, fields) -> float:
    """One pass over the store as retrieval reads it (each read field file sha256-checked
    and memory-mapped, shard by shard)."""
    start = time.perf_counter()
    for _ in store.iter_shards(STEP, fields=fields):
        pass
    return time.perf_counter() - start


def all_scores(test: dict, train: GradientStore) -> np.ndarray:
    """[M, N] float32 scores of every test point against every training example (sparse
    kernel, float32 accumulation), shard by shard."""
    return np.concatenate([np.asarray(pair_scores(test["token_ids"], test["vectors"], shard["token_ids"],
                                                  shard["vectors"], backend="sparse"), np.float32)
                           for shard in train.iter_shards(STEP, fields=("token_ids", "vectors"))],
                          axis=1)


def _ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(x), np.float64)
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties broken by position; the scores here are floats)."""
    if len(x) < 2:
        return float("nan")
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def compare_to_float32(ranking, ranking32, scores: np.ndarray, scores32: np.ndarray,
                       topk: int) -> dict:
    """Agreement of the D-store retrieval with the float32 one (module docstring)."""
    pos, pos32 = ranking.proponents.positions, ranking32.proponents.positions
    overlap, rho = [], []
    for row in range(len(pos)):
        a, b = set(pos[row][pos[row] >= 0].tolist()), set(pos32[row][pos32[row] >= 0].tolist())
        overlap.append(len(a & b) / topk)
        union = np.fromiter(sorted(a | b), np.int64)
        rho.append(spearman(scores[row, union], scores32[row, union]))
    return {"topk_overlap_vs_float32": float(np.mean(overlap)),
            "spearman_vs_float32": float(np.mean(rho)),
            "spearman_all_vs_float32": float(np.mean(
                [spearman(scores[r], scores32[r]) for r in range(len(scores))])),
            "max_rel_err_vs_float32": float(np.abs(scores - scores32).max()
                                            / np.abs(scores32).max())}


def time_retrieval(method, test_store, train_store, topk: int, options=None):
    start = time.perf_counter()
    result = top_k(method, test_store, train_store, topk, options=options)
    return time.perf_counter() - start, result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--k", type=int, default=10, help="token slots per example (top-k)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of word frequencies")
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--topk", type=int, default=100, help="proponents/opponents kept per test point")
    parser.add_argument("--reps", type=int, default=3, help="timed retrievals per kernel")
    parser.add_argument("--backends", default="sparse,dense,library",
                        help="comma list of sparse, dense, library (the registry's tracin_we_topk)")
    parser.add_argument("--paper-test", type=int, default=10)
    parser.add_argument("--paper-train", type=int, default=300)
    parser.add_argument("--workdir", default=None, help="where the temporary stores go")
    parser.add_argument("--keep-stores", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="dtype of the stored vectors; not float32: also compared with a "
                             "float32 store of the same data")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - {"sparse", "dense", "library"})
    if unknown:
        parser.error(f"unknown backends {unknown}")

    result = {"bench": "kernel", **bench.device_description(), "load_avg_start": bench.load_average(),
              "train": args.train, "test": args.test, "k": args.k, "dim": args.dim,
              "topk": args.topk, "default_backend": default_backend(), "store_dtype": args.store_dtype}
    root = Path(tempfile.mkdtemp(prefix="bench_kernel_", dir=args.workdir))
    try:
        start = time.perf_counter()
        train_store = write_store(root / "train", args.train, args.seed, args, args.store_dtype)
        test_store = write_store(root / "test", args.test, args.seed + 1, args, args.store_dtype)
        result["write_s"] = time.perf_counter() - start
        result["store_mb"] = bytes_on_disk(root / "train") / 2**20
        compare = args.store_dtype != "float32"
        if compare:  # the same records as a float32 store
            train32 = write_store(root / "train_f32", args.train, args.seed, args)
            test32 = write_store(root / "test_f32", args.test, args.seed + 1, args)
            result["bytes_on_disk"] = {args.store_dtype: bytes_on_disk(root / "train"),
                                       "float32": bytes_on_disk(root / "train_f32")}
        test = test_store.load(STEP)
        fields = TracInWETopK(k=args.k).read_fields()

        # Floor: reading the store once, and the useful FLOPs at the best GEMM rate.
        read_times, read_times32 = [], []
        for _ in range(max(args.reps, 2)):  # interleaved, so load spikes hit both alike
            read_times.append(time_read(train_store, fields))
            if compare:
                read_times32.append(time_read(train32, fields))
        result["read_s"] = bench.median(read_times)
        flops, matches_per_pair = useful_flops(test["token_ids"], train_store, args.dim)
        rates = gemm_gflops(args.dim)
        result.update({"useful_gflop": flops / 1e9, "matching_tokens_per_pair": matches_per_pair,
                       "gemm_gflops": rates, "compute_floor_s": flops / (max(rates.values()) * 1e9)})
        result["floor_s"] = max(result["read_s"], result["compute_floor_s"])

        # Retrieval with each kernel; all must agree with each other.
        pairs = args.train * args.test
        retrieval, rankings = {}, {}
        for backend in backends:
            times, kernel_times = [], []
            for rep in range(args.reps + 1):  # the first run compiles
                method = ("tracin_we_topk" if backend == "library"
                          else KernelTracInWETopK(args.k, backend))
                seconds, ranking = time_retrieval(method, test_store, train_store, args.topk,
                                                  {"k": args.k} if backend == "library" else None)
                if rep:
                    times.append(seconds)
                    kernel_times.append(getattr(method, "kernel_seconds", np.nan))
            rankings[backend] = ranking
            retrieval[backend] = {"retrieval_s": bench.median(times),
                                  "kernel_s": bench.median(kernel_times),
                                  "pairs_per_s": pairs / bench.median(times)}
        reference = rankings[backends[0]]
        for backend, ranking in rankings.items():
            for kind in ("proponents", "opponents"):
                np.testing.assert_allclose(ranking.ranking(kind).scores,
                                           reference.ranking(kind).scores, rtol=1e-4, atol=1e-5,
                                           err_msg=f"{backend} vs {backends[0]} {kind}")
        result["retrieval"] = retrieval

        # The authors' loop, on a subsample of the same data.
        train0 = next(train_store.iter_shards(STEP, fields=("token_ids", "vectors")))
        num_test = min(args.paper_test, args.test)
        num_train = min(args.paper_train, len(train0["token_ids"]))
        per_pair, loop_scores = paper_loop_seconds_per_pair(float32_vectors(test), float32_vectors(train0),
                                                            num_test, num_train)
        ours = pair_scores(test["token_ids"][:num_test], test["vectors"][:num_test],
                           train0["token_ids"][:num_train], train0["vectors"][:num_train], "sparse")
        np.testing.assert_allclose(ours, loop_scores, rtol=1e-4, atol=1e-4)
        result.update({"paper_loop_us_per_pair": per_pair * 1e6,
                       "paper_loop_pairs": num_test * num_train,
                       "paper_loop_extrapolated_s": per_pair * pairs})

        main_backend = default_backend() if default_backend() in retrieval else backends[0]
        best = retrieval[main_backend]
        result.update({
            "backend_measured": main_backend,
            "retrieval_s": best["retrieval_s"],
            "pairs_per_s": best["pairs_per_s"],
            "speedup_vs_paper_loop": per_pair * best["pairs_per_s"],
            "kernel_speedup_vs_paper_loop": per_pair * pairs / best["kernel_s"],
            "ratio_to_floor": best["retrieval_s"] / result["floor_s"],
        })
        if {"sparse", "dense"} <= set(retrieval):
            result["sparse_speedup_vs_dense"] = (retrieval["dense"]["retrieval_s"]
                                                 / retrieval["sparse"]["retrieval_s"])

        if compare:  # the float32 store: its floor and retrieval, and how far the scores move
            def method_of(backend):
                return "tracin_we_topk" if backend == "library" else KernelTracInWETopK(args.k, backend)
            options = {"k": args.k} if main_backend == "library" else None
            times32, ranking32 = [], None
            for rep in range(args.reps + 1):
                seconds, ranking32 = time_retrieval(method_of(main_backend), test32, train32,
                                                    args.topk, options)
                if rep:
                    times32.append(seconds)
            read32 = bench.median(read_times32)
            floor32 = max(read32, result["compute_floor_s"])
            result["float32"] = {"read_s": read32, "floor_s": floor32,
                                 "retrieval_s": bench.median(times32),
                                 "ratio_to_floor": bench.median(times32) / floor32}
            result["floor_ratio_vs_float32"] = result["read_s"] / read32
            result.update(compare_to_float32(
                rankings[main_backend], ranking32, all_scores(test, train_store),
                all_scores(test32.load(STEP), train32), args.topk))
    finally:
        if not args.keep_stores:
            shutil.rmtree(root, ignore_errors=True)
    result["peak_rss_mb"] = bench.max_rss_mb()
    result["load_avg_end"] = bench.load_average()
    bench.emit(result)
    return result


if __name__ == "__main__":
    main()
