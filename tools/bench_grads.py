"""Benchmark of per-example word-embedding gradients (GitHub issue 3, item 7).

On one randomly initialised BERT and one synthetic batch, in one process:

- ``ratio_vs_forward``: time of our gradient path (``make_gradient_fn``: gradients
  w.r.t. the word embeddings in ``--mode`` (default ``cfg.grads.mode``), top-k
  per-token vectors, side outputs) over the time of the model's forward pass on the
  same batch. Also against a forward pass that is micro-batched like the gradient
  path (``ratio_vs_forward_microbatched``), for the other mode (vmap(grad) or grad of
  the summed loss) and for the un-micro-batched path.
- ``speedup_vs_loop``: the authors' notebook style (one jitted call per example,
  results fetched each time) over ours, same examples.
- ``mfu`` (accelerators only): analytic model FLOPs of the forward pass plus the
  activation backward pass, per second, over the device peak.
- ``examples_per_s`` and memory while writing a gradient store of
  ``--store-examples`` examples with the real ``extract_gradients`` path.

Times are medians over interleaved repetitions after warm-up; every timed call
pulls its result to the host. The last line printed is one JSON object.

    python tools/bench_grads.py                          # CPU defaults (~4 min on 2 cores)
    python tools/bench_grads.py --model-size base --dtype bfloat16 --batch 64   # GPU
"""
from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bench  # noqa: E402

from tracin_jax import mesh as mesh_lib  # noqa: E402
from tracin_jax.config import base_config  # noqa: E402
from tracin_jax.data.tokenize import EncodedDataset  # noqa: E402
from tracin_jax.grads import (  # noqa: E402
    extract_gradients, make_gradient_fn, make_single_device_gradient_fn)
from tracin_jax.grads.embedding_grads import default_micro_batch  # noqa: E402
from tracin_jax.models import BertClassifier, BertConfig, init_params  # noqa: E402
from tracin_jax.models.hf_convert import load_hf_checkpoint  # noqa: E402

# (layers, hidden, heads, intermediate): Google's BERT-tiny, a mid-size one, BERT-base.
MODEL_SIZES = {
    "tiny": (2, 128, 2, 512),  # bert_uncased_L-2_H-128_A-2, the paper's "BERT-small"
    "L4H256": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),
}
VOCAB_SIZE = 30522  # bert-base-uncased
NUM_LABELS = 2
# Dense peak TFLOP/s by device kind substring: (bf16, fp32 matmuls; XLA's default
# precision runs fp32 dots on TF32 tensor cores). Pass --device-peak-tflops to override.
PEAK_TFLOPS = {
    "H200": (989.4, 494.7), "H100": (989.4, 494.7), "A100": (312.0, 156.0),
    "L4": (121.0, 60.0), "V100": (125.0, 15.7),
}


def bert_config(size: str, dtype: str, seq_len: int) -> BertConfig:
    layers, hidden, heads, intermediate = MODEL_SIZES[size]
    return BertConfig(vocab_size=VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=intermediate,
                      max_position_embeddings=max(512, seq_len), num_labels=NUM_LABELS, dtype=dtype)


def model_flops_per_example(cfg: BertConfig, seq_len: int) -> float:
    """Matmul FLOPs of forward + backward to the inputs (no weight gradients) for one example.

    Per layer, forward: Q,K,V,O projections 8·L·H², attention QKᵀ and PV 4·L²·H,
    FFN 4·L·H·I. Backward to the activations: one GEMM per projection (same FLOPs)
    and two per attention matmul (both operands are activations). Plus pooler and
    classifier (2·H² + 2·H·C, twice).
    """
    L, H, I, C = seq_len, cfg.hidden_size, cfg.intermediate_size, cfg.num_labels
    linear, attention = 8 * L * H * H + 4 * L * H * I, 4 * L * L * H
    per_layer = (linear + attention) + (linear + 2 * attention)
    return float(cfg.num_hidden_layers * per_layer + 2 * (2 * H * H + 2 * H * C))


def device_peak_tflops(dtype: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--device-peak-tflops"
    if jax.default_backend() == "cpu":
        return None, "cpu"
    kind = jax.local_devices()[0].device_kind
    for name, (bf16, fp32) in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            per_device = bf16 if dtype == "bfloat16" else fp32
            return per_device * jax.local_device_count(), f"table:{name}"
    return None, f"unknown device {kind!r}: pass --device-peak-tflops"


def bench_step(args) -> dict:
    """Forward vs gradient path vs the per-example loop on one batch."""
    if args.hf_dir:  # a real pretrained encoder (e.g. MiniLM-L6-H384), classifier head added
        cfg, params = load_hf_checkpoint(args.hf_dir, num_labels=NUM_LABELS, dtype=args.dtype)
    else:
        cfg = bert_config(args.model_size, args.dtype, args.seq)
        params = init_params(BertClassifier(cfg), jax.random.key(args.seed), args.seq)
    model = BertClassifier(cfg)
    rng = np.random.default_rng(args.seed)
    host_batch = bench.synthetic_batch(rng, args.batch, args.seq, cfg.vocab_size, NUM_LABELS,
                                       min_len=args.seq // 2)
    mesh = mesh_lib.make_local_mesh()
    params_dev = mesh_lib.replicate(params, mesh)
    batch = mesh_lib.shard_batch(host_batch, mesh)
    per_device = args.batch // mesh.size
    micro = default_micro_batch(per_device, args.seq, width=cfg.hidden_size)

    forward = jax.jit(lambda p, b: model.apply(
        {"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits)

    @jax.jit
    def forward_micro(p, b):
        split = jax.tree.map(lambda x: x.reshape(-1, micro, *x.shape[1:]), b)
        logits = jax.lax.map(lambda c: model.apply(
            {"params": p}, c["input_ids"], c["attention_mask"], c["token_type_ids"]).logits, split)
        return logits.reshape(-1, logits.shape[-1])

    other = "sum" if args.mode == "vmap" else "vmap"
    grads = {
        "grads": make_gradient_fn(model, mesh, k=args.k, mode=args.mode),
        f"grads_{other}": make_gradient_fn(model, mesh, k=args.k, mode=other),
        "grads_no_microbatch": make_gradient_fn(model, mesh, k=args.k, mode=args.mode,
                                                micro_batch=per_device),
    }
    single = make_single_device_gradient_fn(model, k=args.k, mode=args.mode)
    rows = [{f: v[i:i + 1] for f, v in host_batch.items()} for i in range(args.batch)]

    def loop():  # the notebook: one jitted call per example, result fetched each time
        return [jax.device_get(single(params, row)) for row in rows]

    fns = {"forward": lambda: jax.device_get(forward(params_dev, batch))}
    if micro < per_device:
        fns["forward_microbatched"] = lambda: jax.device_get(forward_micro(params_dev, batch))
    fns.update({name: functools.partial(lambda f: jax.device_get(f(params_dev, batch)), fn)
                for name, fn in grads.items()})
    # The public gradient functions check every token id on the host before the call
    # (docs/design.md, "Token ids"); the jitted function alone, to measure that check.
    fns["grads_unchecked"] = lambda: jax.device_get(grads["grads"].__wrapped__(params_dev, batch))
    if not args.skip_loop:
        fns["loop"] = loop
    times = bench.interleaved_times(fns, reps=args.reps, warmup=args.warmup)

    t = {name: bench.median(v) for name, v in times.items()}
    result = {
        "model": args.hf_dir or args.model_size, "dtype": args.dtype, "batch": args.batch, "seq": args.seq,
        "k": args.k, "mode": args.mode, "micro_batch": micro, "reps": args.reps,
        "forward_s": t["forward"], "grads_s": t["grads"],
        "ratio_vs_forward": bench.paired_ratio(times["grads"], times["forward"]),
        "ratio_vs_forward_microbatched": bench.paired_ratio(
            times["grads"], times.get("forward_microbatched", times["forward"])),
        f"ratio_{args.mode}_mode": bench.paired_ratio(times["grads"], times["forward"]),
        f"ratio_{other}_mode": bench.paired_ratio(times[f"grads_{other}"], times["forward"]),
        "ratio_no_microbatch": bench.paired_ratio(times["grads_no_microbatch"], times["forward"]),
        "id_check_overhead": bench.paired_ratio(times["grads"], times["grads_unchecked"]) - 1.0,
        "speedup_vs_loop": (bench.paired_ratio(times["loop"], times["grads"])
                            if "loop" in times else None),
        "times_s": t,
    }
    flops = model_flops_per_example(cfg, args.seq) * args.batch
    peak, source = device_peak_tflops(args.dtype, args.device_peak_tflops)
    result["model_tflops_per_s"] = flops / t["grads"] / 1e12
    result["mfu"] = result["model_tflops_per_s"] / peak if peak else None
    result["peak_tflops"], result["peak_source"] = peak, source
    return result


def bench_store(args) -> dict:
    """Writes a store of ``--store-examples`` examples with ``extract_gradients``."""
    cfg = bert_config(args.store_model_size, args.dtype, args.store_seq)
    model = BertClassifier(cfg)
    params = init_params(model, jax.random.key(args.seed), args.store_seq)
    rng = np.random.default_rng(args.seed + 1)
    n = args.store_examples
    data = bench.synthetic_batch(rng, n, args.store_seq, VOCAB_SIZE, NUM_LABELS,
                                 min_len=args.store_seq // 4)
    encoded = EncodedDataset(**data, ids=np.arange(n, dtype=np.int64))
    out_dir = Path(tempfile.mkdtemp(prefix="bench_grads_store_", dir=args.workdir))
    try:
        with bench.RssSampler() as rss:
            start = time.perf_counter()
            store = extract_gradients(
                model, [(0, 1e-3)], lambda step: params, encoded, out_dir / "store",
                fingerprint="bench", split="train", model_info={"bench": args.store_model_size},
                vocab_size=VOCAB_SIZE, k=args.k, dtype="float32", shard_size=args.shard_size,
                batch_size=args.store_batch, mode=args.mode, progress=False)
            seconds = time.perf_counter() - start
        store_bytes = sum(f.stat().st_size for f in (out_dir / "store").rglob("*") if f.is_file())
        assert store.num_examples == n
    finally:
        if not args.keep_store:
            shutil.rmtree(out_dir, ignore_errors=True)
    return {"store_model": args.store_model_size, "store_examples": n, "store_seq": args.store_seq,
            "store_batch": args.store_batch, "store_seconds": seconds, "examples_per_s": n / seconds,
            "store_mb": store_bytes / 2**20, "store_rss_before_mb": rss.start_mb,
            "store_peak_rss_mb": rss.peak_mb, "store_rss_growth_mb": rss.peak_mb - rss.start_mb}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="L4H256")
    parser.add_argument("--hf-dir", default=None,
                        help="a Hugging Face BERT directory (e.g. the MiniLM-L6-H384 of tools/fetch_minilm.sh): "
                             "its real weights instead of --model-size")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--k", type=int, default=10, help="top-k positions (docs/method.md, eq. 5)")
    parser.add_argument("--mode", choices=("vmap", "sum"), default=base_config().grads.mode,
                        help="gradient formulation of the headline numbers (default: cfg.grads.mode)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device-peak-tflops", type=float, default=None,
                        help="peak dense TFLOP/s of all local devices together (for mfu)")
    parser.add_argument("--skip-loop", action="store_true", help="do not time the per-example loop")
    parser.add_argument("--store-examples", type=int, default=50_000, help="0 skips the store")
    parser.add_argument("--store-model-size", choices=sorted(MODEL_SIZES), default="tiny")
    parser.add_argument("--store-seq", type=int, default=128)
    parser.add_argument("--store-batch", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--workdir", default=None, help="where the temporary store goes")
    parser.add_argument("--keep-store", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    result = {"bench": "grads", **bench.device_description(), "load_avg_start": bench.load_average()}
    result.update(bench_step(args))
    if args.store_examples > 0:
        result.update(bench_store(args))
    result["peak_rss_mb"] = bench.max_rss_mb()
    result["load_avg_end"] = bench.load_average()
    bench.emit(result)
    return result


if __name__ == "__main__":
    main()
