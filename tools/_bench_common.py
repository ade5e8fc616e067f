"""Shared helpers of tools/bench_*.py: timing, memory, synthetic token ids, JSON output.

Timings are taken round-robin ("interleaved"): every repetition runs each
candidate once, so a load spike on a shared machine hits all candidates of that
round alike, and ratios are medians of per-round ratios.
"""
from __future__ import annotations

import json
import math
import os
import resource
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

CLS_ID, SEP_ID = 101, 102  # BERT uncased [CLS] / [SEP]
FIRST_WORD_ID = 1000  # BERT uncased: ids below are [unused*] and punctuation-free specials


def interleaved_times(fns: dict[str, Callable[[], Any]], *, reps: int, warmup: int
                      ) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument ``fn`` (results pulled to the host), round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return float(np.median(np.asarray(values, np.float64)))


def paired_ratio(numerator, denominator) -> float:
    """Median over rounds of numerator[i] / denominator[i]."""
    return median(np.asarray(numerator, np.float64) / np.asarray(denominator, np.float64))


def rss_mb() -> float:
    """Current resident set size of this process (``VmRSS``), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def max_rss_mb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Samples ``VmRSS`` every ``interval`` s in a thread; ``peak_mb`` / ``start_mb`` after exit."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.start_mb = self.peak_mb = float("nan")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start_mb = self.peak_mb = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def zipf_token_ids(rng: np.random.Generator, num_rows: int, num_words: int, vocab_size: int,
                   exponent: float = 1.0) -> np.ndarray:
    """[num_rows, num_words] word ids with Zipf(exponent) frequencies over the vocabulary.

    Rank r (1-based) has probability ∝ r^-exponent and maps to id FIRST_WORD_ID + r - 1,
    so the special ids below FIRST_WORD_ID never appear as words.
    """
    num_ranks = vocab_size - FIRST_WORD_ID
    if num_ranks < 1:
        raise ValueError(f"vocab_size must exceed {FIRST_WORD_ID}, got {vocab_size}")
    weights = np.arange(1, num_ranks + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights / weights.sum())
    ranks = np.searchsorted(cdf, rng.random((num_rows, num_words)), side="right")
    return (FIRST_WORD_ID + np.minimum(ranks, num_ranks - 1)).astype(np.int32)


def synthetic_batch(rng: np.random.Generator, num_rows: int, seq_len: int, vocab_size: int,
                    num_labels: int = 2, min_len: int | None = None) -> dict[str, np.ndarray]:
    """[CLS] words [SEP] [PAD]...: ``input_ids, attention_mask, token_type_ids [N, L]``, ``labels [N]``.

    Lengths are uniform in ``[min_len, seq_len]`` (all ``seq_len`` if ``min_len`` is None).
    """
    lengths = np.full(num_rows, seq_len) if min_len is None else rng.integers(
        min_len, seq_len + 1, num_rows)
    ids = zipf_token_ids(rng, num_rows, seq_len, vocab_size)
    positions = np.arange(seq_len)[None]
    ids[:, 0] = CLS_ID
    ids[positions == (lengths[:, None] - 1)] = SEP_ID
    mask = (positions < lengths[:, None]).astype(np.int32)
    return {"input_ids": np.where(mask == 1, ids, 0).astype(np.int32), "attention_mask": mask,
            "token_type_ids": np.zeros_like(mask),
            "labels": rng.integers(0, num_labels, num_rows).astype(np.int32)}


def device_description() -> dict[str, Any]:
    devices = jax.local_devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "num_devices": len(devices), "cpu_count": os.cpu_count()}


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def emit(result: dict[str, Any]) -> None:
    """Prints the result as the last line: one JSON object (non-finite numbers → null)."""
    print(json.dumps(_clean(result), sort_keys=False), flush=True)
