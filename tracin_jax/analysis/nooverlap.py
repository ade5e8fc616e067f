"""The no-word-overlap experiment (paper sec. 5 "No Word Overlap", appendix J).

Can an influence method find training examples that move a test prediction when
they share no meaningful words with it? Two changes to the usual deletion
evaluation:

1. each test point x' only ranks its *candidates*: the ``num_candidates`` training
   examples with the lowest TF-IDF cosine to x' (5,000 of 50,000 in the paper;
   TF-IDF so that shared stop words weigh little);
2. the word embedding is frozen in training and in every retraining
   (``train.freeze_word_embeddings``), because with a trainable embedding no method
   moves the prediction (appendix J, Table 9).

Methods compared (Table 4, lower block): ``tracin_we`` (exact), ``tracin_we_noc``
(common tokens removed), ``tracin_common`` ([CLS]/[SEP] only), ``tracin_last``.
The gain of TracIn-WE here comes from common tokens (start/end, stop words).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_collections
import numpy as np

log = logging.getLogger(__name__)

NOOVERLAP_METHODS = ("tracin_we", "tracin_we_noc", "tracin_common", "tracin_last")
DEFAULT_NUM_CANDIDATES = 5000  # paper sec. 5: 5,000 of 50,000 training sentences


def nooverlap_defaults() -> ml_collections.ConfigDict:
    """``cfg.nooverlap``: candidate count (the sweep's methods live in ``cfg.sweep``)."""
    return ml_collections.ConfigDict({"num_candidates": DEFAULT_NUM_CANDIDATES})


def lowest_tfidf_sets(test_ds, train_ds, num_candidates: int) -> dict[int, np.ndarray]:
    """``{test id: [num_candidates] training ids}`` with the lowest TF-IDF cosine (ties by position)."""
    from tracin_jax.methods import lowest_tfidf_candidates

    def joined(ds):
        if ds.text_pairs is None:
            return list(ds.texts)
        return [f"{a} {b}" for a, b in zip(ds.texts, ds.text_pairs)]

    n = min(int(num_candidates), len(train_ds))
    if n < int(num_candidates):
        log.warning("num_candidates=%d exceeds the %d training examples; using all of them",
                    num_candidates, len(train_ds))
    sets = lowest_tfidf_candidates(joined(test_ds), joined(train_ds), np.asarray(train_ds.ids), n)
    return {int(t): np.asarray(c, np.int64) for t, c in zip(test_ds.ids, sets)}


def shared_tokens(test_enc, train_enc, candidates: Mapping[int, np.ndarray],
                  ignore: Sequence[int] = ()) -> dict[str, float]:
    """Word overlap between each test point and its candidates, ``ignore``d ids (special tokens,
    padding) left out: the mean number of shared token types, and the share of pairs with none."""
    ignore = set(int(i) for i in ignore)
    row_of = {int(e): i for i, e in enumerate(np.asarray(train_enc.ids))}
    train_sets = [set(r[m > 0].tolist()) - ignore for r, m in zip(train_enc.input_ids, train_enc.attention_mask)]
    shared, none = [], []
    for t, row in zip(np.asarray(test_enc.ids), range(len(test_enc.ids))):
        tokens = set(test_enc.input_ids[row][test_enc.attention_mask[row] > 0].tolist()) - ignore
        for c in candidates[int(t)]:
            k = len(tokens & train_sets[row_of[int(c)]])
            shared.append(k)
            none.append(k == 0)
    return {"mean_shared_tokens": float(np.mean(shared)), "share_without_overlap": float(np.mean(none)),
            "pairs": len(shared)}


def rank_within_candidates(methods: Sequence[str], test_store, train_store, candidates, depth: int, *,
                           context=None, mesh=None) -> dict:
    """``{method: deletion.Rankings}``: each test point's top-``depth`` proponents/opponents among
    its own candidates only."""
    from tracin_jax.deletion.rankings import from_retrieval, method_options
    from tracin_jax.methods import top_k

    out = {}
    for method in methods:
        name, options = method_options(method, train_store)
        retrieval = top_k(name, test_store, train_store, int(depth), context=context, mesh=mesh,
                          options=options, per_test_candidates=candidates)
        out[method] = from_retrieval(retrieval)
    return out


def run_nooverlap(cfg: ml_collections.ConfigDict, out_dir: str | Path, *, progress: bool = False,
                  echo=print) -> dict:
    """Train (frozen embedding) → exact gradient stores → TF-IDF candidates → rankings within
    them → deletion sweep (frozen embedding) → report. Resumable: every stage skips finished work."""
    from tracin_jax import mesh as mesh_lib
    from tracin_jax.deletion import plan_from_run, run_sweep, sweep_report
    from tracin_jax.methods import RunContext
    from tracin_jax.pipeline import run_gradients, split_examples
    from tracin_jax.train import prepare_run, train

    if not cfg.train.freeze_word_embeddings:
        raise ValueError("the no-overlap experiment freezes the word embedding (appendix J): set "
                         "train.freeze_word_embeddings=True")
    out = Path(out_dir)
    run = out / "run"
    setup = prepare_run(cfg, run)
    result = train(cfg, run, setup=setup, progress=progress)
    echo(f"[nooverlap] trained: eval accuracy {result.eval_metrics['accuracy']:.4f}, checkpoints "
         f"{[c.step for c in result.checkpoints]}")
    stores = {split: run_gradients(run, split, out / "grads" / split, k=0, setup=setup, progress=progress)
              for split in ("train", "test")}  # exact vectors: tracin_we / _noc / common
    test = split_examples(setup, "test")
    candidates = lowest_tfidf_sets(test.texts, setup.texts["train"], int(cfg.nooverlap.num_candidates))
    overlap = shared_tokens(test.encoded, setup.train, candidates, ignore=[setup.tokenizer.pad_id,
                                                                          *setup.tokenizer.special_ids])
    echo(f"[nooverlap] {len(candidates)} test points x {len(next(iter(candidates.values())))} candidates; "
         f"shared word types per pair (specials excluded): {overlap['mean_shared_tokens']:.3f}, "
         f"{overlap['share_without_overlap']:.1%} of pairs share none")
    (out / "candidates.json").write_text(json.dumps({str(k): v.tolist() for k, v in candidates.items()}))
    context = RunContext.from_run(run, setup=setup)
    mesh = mesh_lib.make_local_mesh()
    depth = max(int(k) for k in cfg.sweep.k_grid)
    rankings = rank_within_candidates(cfg.sweep.methods, stores["test"], stores["train"], candidates,
                                      depth, context=context, mesh=mesh)
    plan_from_run(cfg.sweep, run, out / "sweep", rankings=rankings, setup=setup, context=context,
                  mesh=mesh, measure=False, echo=echo)
    run_sweep(out / "sweep", setup=setup, progress=True, echo=echo)
    summary = sweep_report(out / "sweep")
    summary["overlap"] = overlap
    (out / "nooverlap_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
