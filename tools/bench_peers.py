"""Benchmark against a peer: the same TracIn work done by Captum and by this project.

Setup, the same for both sides: a Hugging Face BERT classifier (transformers' PyTorch
``BertForSequenceClassification``; defaults: BERT's vocabulary 30,522, hidden 128, 2
layers, 2 heads, intermediate 512, 2 labels), trained briefly (AdamW; ``--train-steps``
steps at η1, then as many at η2) and saved with ``save_pretrained`` as ``checkpoint-S1``
and ``checkpoint-S2`` (learning rates η1, η2); ``--train`` training and ``--test`` test
examples of Zipf-distributed word ids (tokens repeat as in text) between [CLS] and [SEP],
lengths uniform in ``[--min-len, --seq]``, random labels.

- **Captum** (``captum.influence``): ``TracInCP`` with ``layers=["bert.embeddings.word_
  embeddings"]`` (dense ``V×d`` per-example table gradients; ``loss_fn =
  CrossEntropyLoss(reduction="none")``, ``sample_wise_grads_per_batch=False``: the only
  mode that supports an embedding layer), the full ``[test, train]`` matrix
  (``influence(test_batch, k=None)``); ``TracInCPFast`` on the classifier
  (``final_fc_layer="classifier"``, ``CrossEntropyLoss(reduction="sum")``). Both get the
  checkpoints through a ``checkpoints_load_func`` that loads the state dict (read from
  ``model.safetensors`` once, then kept in memory: no disk time is charged to Captum, which
  reloads every checkpoint for every training batch) and returns the checkpoint's learning
  rate, which Captum multiplies in.
- **This project**: the same directories through the import path
  (``stages.imports.import_hf(dirs, run, lrs=...)``, timed apart as ``ours_import_s``),
  the run read once (``train.load_run``, inside ``ours_grads_s``, as ``tracin-jax grads
  --split a,b`` reads it once), the examples as pre-tokenised JSONL attached by
  ``stages.gradients.run_gradients(run, split, out, k=0, dtype=--store-dtype, data=FILE,
  setup=...)`` (exact vectors: float32 by default, given explicitly since a run's
  ``cfg.grads.dtype`` may be bfloat16; every checkpoint's digest verified), then
  ``methods.score_matrix("tracin_we", test, train)`` and ``score_matrix("tracin_last", ...)``
  from the same stores. Warm: the gradient program compiled by the warm-up run is reused
  (``make_gradient_fn`` keeps a process's programs by model and options), as in a notebook
  that scores a second batch of data.

Captum's ``TracInCPFast`` computes ``(a·a')(g·g')`` per checkpoint — a = the classifier's
input, g = ∂ℓ/∂logits — i.e. the classifier *weight* gradient only, bias excluded: the
convention of this project's ``tracin_last``. Shown numerically too: the scores are also
compared with ``tracin_layer[classifier]+bias`` (bias counted; an untimed extra store of
classifier gradients).

Each side runs in its own subprocess (``--side``), so ``ru_maxrss`` is that side's peak
RSS; each does ``--warmup`` untimed runs, then ``--reps`` timed ones (median). Times are
end to end: gradients + scores (Captum: one ``influence`` call; ours: both gradient
stores + ``score_matrix``), as wall seconds and as the process's CPU seconds (user +
system, all threads; ``*_cpu_s`` and ``speedup_*_cpu_time``: steadier than wall time on a
shared machine, where the two sides run at different times). Load averages are recorded
before and after each side. The last line printed is one JSON object::

    .venv/bin/python tools/bench_peers.py       # defaults: ~5 min on 2 idle cores (mostly Captum)
    .venv/bin/python tools/bench_peers.py --train 200 --test 20 --reps 1

``captum_oom_estimate``: Captum's ``TracInCP`` keeps every test example's dense
table gradient for every checkpoint (``_get_checkpoint_jacobians``) and, per training
batch, a list of ``B`` per-example gradients plus their ``torch.stack`` copy, so its peak
is about ``base + G·max((C+1)·M, C·M + 2·B)`` bytes with ``G = 4·V·d`` (float32 table
gradient), ``C`` checkpoints, ``M`` test examples per ``influence`` call, ``B`` the
training batch size and ``base`` the model / framework floor (fitted from the measured
peak). The JSON gives the largest ``M`` that fits a 24 GiB machine for this model and for
BERT-base's table (``V=30522, d=768``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
WE_LAYER = "bert.embeddings.word_embeddings"
LAST_LAYER = "classifier"
CLS_SEP_BERT = (101, 102)  # bert-base-uncased [CLS] / [SEP] (vocabularies > 1000)
CLS_SEP_SMALL = (2, 3)  # small test vocabularies: [PAD] [UNK] [CLS] [SEP] [MASK] w0 w1 ...
FIRST_WORD_SMALL = 5
MEMORY_BUDGET = 24 * 2**30  # "a 24 GB machine"
BERT_BASE_TABLE = (30522, 768)


# ----------------------------------------------------------------------------- setup
def make_examples(rng: np.random.Generator, n: int, seq: int, vocab: int, num_labels: int,
                  min_len: int) -> dict[str, np.ndarray]:
    """``input_ids, attention_mask [n, seq]`` (right-padded with 0), ``labels [n]``.

    Words are Zipf(1)-distributed (``_bench_common.zipf_token_ids`` for BERT-size
    vocabularies; the same law over ids ``5..vocab-1`` for tiny test vocabularies).
    """
    lengths = rng.integers(min_len, seq + 1, n)
    if vocab > 2000:
        sys.path.insert(0, str(TOOLS))
        from _bench_common import zipf_token_ids
        ids, (cls, sep) = zipf_token_ids(rng, n, seq, vocab), CLS_SEP_BERT
    else:
        ranks = np.arange(1, vocab - FIRST_WORD_SMALL + 1, dtype=np.float64) ** -1.0
        cdf = np.cumsum(ranks / ranks.sum())
        words = np.minimum(np.searchsorted(cdf, rng.random((n, seq)), side="right"), len(cdf) - 1)
        ids, (cls, sep) = (FIRST_WORD_SMALL + words).astype(np.int64), CLS_SEP_SMALL
    positions = np.arange(seq)[None]
    ids[:, 0] = cls
    ids[positions == lengths[:, None] - 1] = sep
    mask = (positions < lengths[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask == 1, ids, 0).astype(np.int64), "attention_mask": mask,
            "labels": rng.integers(0, num_labels, n).astype(np.int64)}


def write_jsonl(path: Path, data: dict[str, np.ndarray]) -> None:
    """Pre-tokenised rows ``{"input_ids": [...], "label": c}`` (padding dropped)."""
    with open(path, "w") as f:
        for ids, mask, label in zip(data["input_ids"], data["attention_mask"], data["labels"]):
            f.write(json.dumps({"input_ids": ids[mask == 1].tolist(), "label": int(label)}) + "\n")


def make_checkpoints(root: Path, *, vocab: int, hidden: int, layers: int, heads: int, intermediate: int,
                     seq: int, num_labels: int, train: dict[str, np.ndarray], lrs=(1e-3, 5e-4),
                     steps: int = 5, batch: int = 32, seed: int = 0) -> list[Path]:
    """Trains a ``BertForSequenceClassification`` briefly (AdamW, ``steps`` steps at each
    learning rate of ``lrs``) and saves it after each stage as ``root/checkpoint-STEP``."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=intermediate,
                                     max_position_embeddings=max(512, seq), num_labels=num_labels)
    model = transformers.BertForSequenceClassification(config)
    model.train()
    rng = np.random.default_rng(seed)
    n = len(train["labels"])
    dirs, step = [], 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=lrs[0])
    for lr in lrs:
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(steps):
            rows = rng.choice(n, size=min(batch, n), replace=False)
            out = model(input_ids=torch.as_tensor(train["input_ids"][rows]),
                        attention_mask=torch.as_tensor(train["attention_mask"][rows]),
                        labels=torch.as_tensor(train["labels"][rows]))
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            step += 1
        d = root / f"checkpoint-{step}"
        model.save_pretrained(d)
        dirs.append(d)
    return dirs


# ----------------------------------------------------------------------------- Captum
def _logits_bert():
    import transformers

    class LogitsBert(transformers.BertForSequenceClassification):
        """Captum calls ``model(*batch[:-1])`` and wants a tensor: the logits."""

        def forward(self, input_ids, attention_mask):  # noqa: D401
            return super().forward(input_ids=input_ids, attention_mask=attention_mask).logits

    return LogitsBert


class CaptumSide:
    """Captum's TracInCP (word-embedding table) and TracInCPFast (classifier) over the
    checkpoint directories ``dirs`` with learning rates ``lrs``."""

    def __init__(self, dirs, lrs, train: dict[str, np.ndarray], test: dict[str, np.ndarray], batch: int = 32):
        import torch
        from safetensors.torch import load_file

        self.torch = torch
        self.dirs = [str(d) for d in dirs]
        self.lrs = dict(zip(self.dirs, map(float, lrs)))
        self.states = {d: load_file(str(Path(d) / "model.safetensors")) for d in self.dirs}
        self.model = _logits_bert().from_pretrained(self.dirs[0]).eval()
        self.train = torch.utils.data.TensorDataset(*(torch.as_tensor(train[k]) for k in
                                                      ("input_ids", "attention_mask", "labels")))
        self.test = tuple(torch.as_tensor(test[k]) for k in ("input_ids", "attention_mask", "labels"))
        self.batch = int(batch)
        self.loads = 0

    def load(self, model, path) -> float:
        """``checkpoints_load_func``: the checkpoint's weights into ``model``; returns its lr."""
        model.load_state_dict(self.states[path], strict=True)
        model.eval()
        self.loads += 1
        return self.lrs[path]

    def tracin_we(self) -> np.ndarray:
        from captum.influence import TracInCP

        tracin = TracInCP(self.model, self.train, self.dirs, checkpoints_load_func=self.load, layers=[WE_LAYER],
                          loss_fn=self.torch.nn.CrossEntropyLoss(reduction="none"), batch_size=self.batch,
                          sample_wise_grads_per_batch=False)
        return tracin.influence(self.test, k=None).detach().double().numpy()

    def tracin_last(self) -> np.ndarray:
        from captum.influence import TracInCPFast

        tracin = TracInCPFast(self.model, LAST_LAYER, self.train, self.dirs, checkpoints_load_func=self.load,
                              loss_fn=self.torch.nn.CrossEntropyLoss(reduction="sum"), batch_size=self.batch)
        return tracin.influence(self.test, k=None).detach().double().numpy()


class Clock:
    """Wall seconds and this process's CPU seconds (user + system, all threads) between laps:
    on a shared machine CPU time is the steadier measure of the work done."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def lap(self, into: dict, name: str) -> None:
        wall, cpu = time.perf_counter(), self._cpu()
        into[name], into[f"{name}_cpu"] = wall - self.wall, cpu - self.cpu
        self.wall, self.cpu = wall, cpu


# ----------------------------------------------------------------------------- this project
def ours_once(dirs, lrs, train_file: Path, test_file: Path, work: Path, *, seq: int, dtype: str = "float32",
              bias_check: bool = False) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Import → gradient stores of both files → score matrices. Returns ``(matrices, seconds)``;
    matrices ``[test, train]`` ordered by example id. ``dtype``: the stores' vector dtype, given
    explicitly (float32 = exact vectors; the run's ``cfg.grads.dtype`` may be bfloat16)."""
    from tracin_jax.methods import score_matrix
    from tracin_jax.stages.gradients import run_gradients
    from tracin_jax.stages.imports import import_hf
    from tracin_jax.train import load_run

    def ordered(m):
        return m.scores[np.argsort(m.test_ids)][:, np.argsort(m.train_ids)].astype(np.float64)

    run, t = work / "run", {}
    clock = Clock()
    import_hf(dirs, run, lrs=list(lrs), max_length=seq, overwrite=True)
    clock.lap(t, "import")
    fields = {"text": "text", "label": "label"}
    setup = load_run(run)  # read once for both splits, as `tracin-jax grads --split a,b` does
    train = run_gradients(run, "train", work / "train", k=0, dtype=dtype, data=train_file, data_fields=fields,
                          progress=False, overwrite=True, setup=setup)
    test = run_gradients(run, "test", work / "test", k=0, dtype=dtype, data=test_file, data_fields=fields,
                         progress=False, overwrite=True, setup=setup)
    clock.lap(t, "grads")
    out = {"we": ordered(score_matrix("tracin_we", test, train))}
    clock.lap(t, "we_score")
    out["last"] = ordered(score_matrix("tracin_last", test, train))
    clock.lap(t, "last_score")
    if bias_check:  # classifier gradients stored, bias included (untimed)
        kw = dict(k=0, dtype=dtype, progress=False, overwrite=True, param_groups="classifier", include_bias=True)
        train_b = run_gradients(run, "train", work / "train_bias", **kw)
        test_b = run_gradients(run, "test", work / "test_bias", **kw)
        out["last_bias"] = ordered(score_matrix("tracin_layer[classifier]+bias", test_b, train_b))
        out["last_nobias_layer"] = ordered(score_matrix("tracin_layer[classifier]", test_b, train_b))
    return out, t


# ----------------------------------------------------------------------------- sides
def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median(values) -> float:
    return float(np.median(np.asarray(values, np.float64)))


def side_captum(work: Path, setup: dict) -> dict:
    import torch

    data = np.load(work / "data.npz")
    train = {k[6:]: data[k] for k in data.files if k.startswith("train_")}
    test = {k[5:]: data[k] for k in data.files if k.startswith("test_")}
    rss0 = _maxrss_mb()
    side = CaptumSide(setup["dirs"], setup["lrs"], train, test, batch=setup["captum_batch"])
    result = {"torch_threads": torch.get_num_threads(), "rss_after_setup_mb": _maxrss_mb(),
              "rss_start_mb": rss0}
    for name, fn in (("last", side.tracin_last), ("we", side.tracin_we)):  # last first: its peak is smaller
        if name == "we" and setup["skip_captum_we"]:
            continue
        for _ in range(setup["warmup"]):
            fn()
        times = []
        for _ in range(setup["reps"]):
            side.loads, t, clock = 0, {}, Clock()
            scores = fn()
            clock.lap(t, name)
            times.append(t)
        np.save(work / f"captum_{name}.npy", scores)
        result[f"{name}_times_s"] = times
        result[f"{name}_s"] = _median([t[name] for t in times])
        result[f"{name}_cpu_s"] = _median([t[f"{name}_cpu"] for t in times])
        result[f"{name}_checkpoint_loads"] = side.loads
        result[f"peak_rss_after_{name}_mb"] = _maxrss_mb()
    result["peak_rss_mb"] = _maxrss_mb()
    return result


def side_ours(work: Path, setup: dict) -> dict:
    import jax

    rss0 = _maxrss_mb()
    times = []
    for i in range(setup["warmup"] + setup["reps"]):
        rep = work / "ours" / f"rep{i}"
        out, t = ours_once(setup["dirs"], setup["lrs"], work / "train.jsonl", work / "test.jsonl", rep,
                           seq=setup["seq"], dtype=setup["store_dtype"], bias_check=False)
        if i >= setup["warmup"]:
            times.append(t)
        shutil.rmtree(rep, ignore_errors=True)
    peak_timed = _maxrss_mb()
    out_b, _ = ours_once(setup["dirs"], setup["lrs"], work / "train.jsonl", work / "test.jsonl",
                         work / "ours" / "bias", seq=setup["seq"], dtype=setup["store_dtype"], bias_check=True)
    for name in ("we", "last"):
        np.save(work / f"ours_{name}.npy", out[name])
    for name in ("last_bias", "last_nobias_layer"):
        np.save(work / f"ours_{name}.npy", out_b[name])
    result = {f"{k}_s": _median([t[k] for t in times]) for k in times[0]}
    result["times_s"] = times
    result.update(backend=jax.default_backend(), rss_start_mb=rss0, peak_rss_mb=peak_timed,
                  peak_rss_with_bias_check_mb=_maxrss_mb())
    return result


def _run_side(side: str, work: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--side", side, "--workdir", str(work)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"the {side} side failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- comparison
def _significant(value, digits: int = 6):
    """JSON-ready copy: floats to ``digits`` significant digits (small differences stay
    visible, unlike ``_bench_common.emit``'s 6 decimals), non-finite → null."""
    if isinstance(value, dict):
        return {k: _significant(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_significant(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return float(f"{value:.{digits}g}") if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def max_rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def oom_estimate(vocab: int, hidden: int, checkpoints: int, test: int, batch: int, measured_peak_mb: float | None,
                 budget: int = MEMORY_BUDGET) -> dict:
    """Captum TracInCP's peak memory model (module docstring) and where it exceeds ``budget``."""
    def peak(g, m, b):
        return g * max((checkpoints + 1) * m, checkpoints * m + 2 * b)

    g = 4 * vocab * hidden
    model_bytes = peak(g, test, batch)
    base = None if measured_peak_mb is None else max(measured_peak_mb * 2**20 - model_bytes, 0.0)
    floor = base or 0.0

    def max_test(gb):
        # largest M with floor + gb·max((C+1)·M, C·M + 2·B) <= budget
        free = (budget - floor) / gb
        m = int(free // (checkpoints + 1))
        while m > 0 and peak(gb, m, batch) * 1.0 > budget - floor:
            m -= 1
        return max(m, 0)

    g_base = 4 * BERT_BASE_TABLE[0] * BERT_BASE_TABLE[1]
    return {
        "formula": "peak ≈ base + G·max((C+1)·M, C·M + 2·B), G = 4·V·d bytes (one float32 V×d table gradient); "
                   "C checkpoints, M test examples per influence() call (all their gradients for all "
                   "checkpoints are kept), B training batch (a list of B gradients + their torch.stack copy)",
        "budget_bytes": budget, "bytes_per_example_gradient": g, "checkpoints": checkpoints, "test": test,
        "batch": batch, "predicted_bytes_without_base": model_bytes,
        "base_bytes_fitted": base,
        "max_test_per_call_this_model": max_test(g),
        "max_checkpoints_at_this_test": (int(min((budget - floor) / g // test - 1,
                                                 ((budget - floor) / g - 2 * batch) // test)) if test else None),
        "bytes_per_example_gradient_bert_base_table": g_base,
        "predicted_bytes_bert_base_table": peak(g_base, test, batch) + floor,
        "max_test_per_call_bert_base_table": max_test(g_base),
        "oom_at_this_setup_bert_base_table": peak(g_base, test, batch) + floor > budget,
    }


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=None, help="default 4 × hidden")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--min-len", type=int, default=None, help="shortest example (default seq // 2)")
    parser.add_argument("--labels", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=5, help="AdamW steps before each checkpoint")
    parser.add_argument("--lrs", default="1e-3,5e-4", help="learning rate of each checkpoint")
    parser.add_argument("--store-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="this project's stored vectors (float32: exact, the comparison's bar)")
    parser.add_argument("--captum-batch", type=int, default=32, help="Captum's training batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each side first")
    parser.add_argument("--reps", type=int, default=1, help="timed runs of each side (median)")
    parser.add_argument("--skip-captum-we", action="store_true", help="Captum's TracInCP not run")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", choices=("captum", "ours"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side is not None:  # a subprocess: one side
        work = Path(args.workdir)
        setup = json.loads((work / "setup.json").read_text())
        result = (side_captum if args.side == "captum" else side_ours)(work, setup)
        print(json.dumps(result), flush=True)
        return None

    sys.path.insert(0, str(TOOLS))
    import _bench_common as bench

    intermediate = args.intermediate or 4 * args.hidden
    min_len = args.min_len or max(3, args.seq // 2)
    lrs = [float(x) for x in args.lrs.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_peers_", dir=args.workdir))
    result: dict = {"bench": "peers", "captum_version": None, "load_avg_start": bench.load_average()}
    try:
        import captum
        import torch
        import transformers

        result.update(captum_version=captum.__version__, torch_version=torch.__version__,
                      transformers_version=transformers.__version__, cpu_count=os.cpu_count())
        rng = np.random.default_rng(args.seed)
        train = make_examples(rng, args.train, args.seq, args.vocab, args.labels, min_len)
        test = make_examples(rng, args.test, args.seq, args.vocab, args.labels, min_len)
        dirs = make_checkpoints(work / "hf", vocab=args.vocab, hidden=args.hidden, layers=args.layers,
                                heads=args.heads, intermediate=intermediate, seq=args.seq,
                                num_labels=args.labels, train=train, lrs=lrs, steps=args.train_steps,
                                seed=args.seed)
        np.savez(work / "data.npz", **{f"train_{k}": v for k, v in train.items()},
                 **{f"test_{k}": v for k, v in test.items()})
        write_jsonl(work / "train.jsonl", train)
        write_jsonl(work / "test.jsonl", test)
        setup = {"dirs": [str(d) for d in dirs], "lrs": lrs, "seq": args.seq, "captum_batch": args.captum_batch,
                 "store_dtype": args.store_dtype, "warmup": args.warmup, "reps": args.reps, "skip_captum_we": args.skip_captum_we}
        (work / "setup.json").write_text(json.dumps(setup))
        result.update(train=args.train, test=args.test, vocab=args.vocab, hidden=args.hidden, layers=args.layers,
                      heads=args.heads, intermediate=intermediate, seq=args.seq, min_len=min_len,
                      labels=args.labels, checkpoints=[d.name for d in dirs], lrs=lrs,
                      captum_batch=args.captum_batch, ours_store_dtype=args.store_dtype, warmup=args.warmup, reps=args.reps,
                      mean_tokens=float(train["attention_mask"].sum(1).mean()),
                      distinct_tokens_train=int(np.unique(train["input_ids"][train["attention_mask"] == 1]).size))

        result["load_avg_before_ours"] = bench.load_average()
        ours = _run_side("ours", work)
        result["load_avg_before_captum"] = bench.load_average()
        cap = _run_side("captum", work)
        result["load_avg_end"] = bench.load_average()

        ours_we_s = ours["grads_s"] + ours["we_score_s"]
        ours_last_s = ours["grads_s"] + ours["last_score_s"]
        ours_we_cpu = ours["grads_cpu_s"] + ours["we_score_cpu_s"]
        ours_last_cpu = ours["grads_cpu_s"] + ours["last_score_cpu_s"]
        o_last, c_last = np.load(work / "ours_last.npy"), np.load(work / "captum_last.npy")
        result["last_layer_bias_convention"] = (
            "excluded on both sides: Captum 0.9 TracInCPFast scores (a·a')(g·g')·lr per checkpoint "
            "(classifier input a, g = dloss/dlogits), the classifier weight gradient only, no bias term "
            "(g·g'); this project's tracin_last is Σ_c η_c ⟨a,a'⟩⟨p−y,p'−y'⟩, bias excluded")
        if not args.skip_captum_we:
            result["speedup_vs_captum_we"] = cap["we_s"] / ours_we_s
            result["speedup_vs_captum_we_incl_import"] = cap["we_s"] / (ours_we_s + ours["import_s"])
            result["speedup_vs_captum_we_cpu_time"] = cap["we_cpu_s"] / ours_we_cpu
            result["max_rel_diff_we"] = max_rel_diff(np.load(work / "ours_we.npy"), np.load(work / "captum_we.npy"))
        result["speedup_vs_captum_last"] = cap["last_s"] / ours_last_s
        result["speedup_vs_captum_last_cpu_time"] = cap["last_cpu_s"] / ours_last_cpu
        result["speedup_vs_captum_last_scores_only"] = cap["last_s"] / ours["last_score_s"]
        result["max_rel_diff_last"] = max_rel_diff(o_last, c_last)
        result["max_rel_diff_last_vs_ours_with_bias"] = max_rel_diff(np.load(work / "ours_last_bias.npy"), c_last)
        result["max_rel_diff_last_vs_ours_layer_classifier"] = max_rel_diff(
            np.load(work / "ours_last_nobias_layer.npy"), c_last)
        result["captum_we_s"], result["captum_we_cpu_s"] = cap.get("we_s"), cap.get("we_cpu_s")
        result["captum_last_s"], result["captum_last_cpu_s"] = cap["last_s"], cap["last_cpu_s"]
        result["ours_we_s"], result["ours_last_s"] = ours_we_s, ours_last_s
        result["ours_we_cpu_s"], result["ours_last_cpu_s"] = ours_we_cpu, ours_last_cpu
        result.update({f"ours_{k}": v for k, v in ours.items() if k.endswith("_s")})
        result["captum_peak_rss_mb"] = cap["peak_rss_mb"]
        result["captum_last_peak_rss_mb"] = cap["peak_rss_after_last_mb"]
        result["captum_setup_rss_mb"] = cap["rss_after_setup_mb"]
        result["ours_peak_rss_mb"] = ours["peak_rss_mb"]
        result["captum_checkpoint_loads_we"] = cap.get("we_checkpoint_loads")
        result["captum_torch_threads"] = cap["torch_threads"]
        result["ours_backend"] = ours["backend"]
        result["captum_oom_estimate"] = oom_estimate(
            args.vocab, args.hidden, len(dirs), args.test, args.captum_batch,
            None if args.skip_captum_we else cap["peak_rss_mb"])
        result["captum_times_s"] = {k: cap[k] for k in cap if k.endswith("times_s")}
        result["ours_times_s"] = ours["times_s"]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            result["workdir"] = str(work)
    result["peak_rss_parent_mb"] = _maxrss_mb()
    print(json.dumps(_significant(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
