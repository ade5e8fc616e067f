"""TracIn on the word-embedding layer: tracin_we, tracin_we_topk, tracin_we_noc, tracin_common.

With per-token vectors ``G_w(x) = Σ_{i: x_i = w} ∂ℓ(x)/∂e_i`` (the rows of the
embedding-table gradient, eq. 3 of docs/method.md) stored per checkpoint,

    tracin_we(x, x') = Σ_c η_c Σ_{w ∈ x ∩ x'} ⟨G_w(x), G_w(x')⟩          (eq. 4)

which is ``Σ_c η_c ⟨∂ℓ(x)/∂E_c, ∂ℓ(x')/∂E_c⟩``: one SGD step of size η_c on x
changes ℓ(x') by ``−η_c ⟨·,·⟩`` to first order, so score > 0 = proponent (the
paper's leading minus is dropped, docs/method.md "Sign convention"). Variants:

- ``tracin_we_topk``: the same with ``G^k`` (top-k positions by ``‖g_i‖``, eq. 6)
  on both sides; needs stores extracted with that k.
- ``tracin_we_noc``: common tokens removed from both sides (sec. 4.5): special
  tokens plus a configurable list, by default every token whose training-set
  document frequency exceeds ``df_threshold``.
- ``tracin_common``: only the start/end special tokens ([CLS]/[SEP], <s>/</s>).

Each pair score is exactly the sum of its shared tokens' contributions
``Σ_c η_c ⟨G_w(x), G_w(x')⟩`` (``token_contributions``, sec. 4.3).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from tracin_jax.kernels import (PAD_ID, default_backend, pair_scores_dense, pair_scores_sparse,
                                pair_token_contributions_jit, prepare_a_side)
from tracin_jax.methods.base import ArrayMethod, MethodError, shared_checkpoints, store_k

log = logging.getLogger(__name__)

DEFAULT_TOPK = 10  # docs/method.md, eq. 5: top-10 positions by gradient norm
# Sec. 4.5 removes stop words and punctuation; a token in more than 10% of the
# training documents is treated as one (a named default, configurable).
DEFAULT_DF_THRESHOLD = 0.1


class TracInWE(ArrayMethod):
    """``tracin_we``: exact TracIn-WE (eq. 4, docs/method.md); needs stores extracted with k=None."""

    name = "tracin_we"
    fields = ("token_ids", "vectors")
    decomposable = True

    def _check_k(self, store) -> None:
        k = store_k(store)
        if k is not None:
            raise MethodError(
                f"{self.name} needs exact per-token vectors (a store extracted with k=None: "
                f"`tracin-jax grads --k 0`), but {store.directory} has k={k}; use "
                f"tracin_we_topk for top-k stores")

    def _bind(self, test_store, train_store, context):
        shared_checkpoints(test_store, train_store)
        for store in (test_store, train_store):
            self._check_k(store)

    def _keep(self, token_ids: np.ndarray) -> np.ndarray:
        """Which token slots take part (all non-padding slots here)."""
        return token_ids != PAD_ID

    def inputs(self, block, step, side):
        ids = np.asarray(block["token_ids"], np.int32)
        return {"token_ids": np.where(self._keep(ids), ids, PAD_ID).astype(np.int32),
                "vectors": block["vectors"]}

    def kernel(self, test, train):
        return pair_scores_dense(test["token_ids"], test["vectors"], train["token_ids"],
                                 train["vectors"])

    # retrieval may score two training shards at once in threads on CPU (the sparse join's
    # state is a cache of the test block's side: filled alike by either thread)
    parallel_blocks = True

    def score_block(self, test, train, step, mesh=None):
        # On CPU the inverted-index join does only the useful work (tools/bench_kernel.py:
        # ~10x the masked dense GEMM); accelerators run the dense GEMM sharded over the mesh.
        if default_backend() == "sparse":
            # The test block is the same for every training shard of a checkpoint: its side
            # of the join is prepared once and kept with a reference to the block.
            cached = getattr(self, "_sparse_test", None)
            if cached is None or cached[0] is not test or cached[1] != step:
                a = self.inputs(test, step, "test")
                cached = (test, step, a, prepare_a_side(a["token_ids"], a["vectors"]))
                self._sparse_test = cached
            a, side = cached[2], cached[3]
            b = self.inputs(train, step, "train")
            return np.asarray(pair_scores_sparse(a["token_ids"], a["vectors"], b["token_ids"],
                                                 b["vectors"], a_side=side), np.float32)
        return super().score_block(test, train, step, mesh)

    def token_contributions(self, test_record, train_record, step):
        """``(token_ids [U], contributions [U])`` of one pair at one checkpoint (unweighted)."""
        a, b = self.inputs(test_record, step, "test"), self.inputs(train_record, step, "train")
        ids, contributions = pair_token_contributions_jit(
            a["token_ids"][0], a["vectors"][0], b["token_ids"][0], b["vectors"][0])
        ids, contributions = np.asarray(ids), np.asarray(contributions, np.float32)
        used = ids != PAD_ID
        return ids[used], contributions[used]


class TracInWETopK(TracInWE):
    """``tracin_we_topk``: TracIn-WE with ``G^k`` on both sides (eq. 6, docs/method.md)."""

    name = "tracin_we_topk"

    def __init__(self, k: int = DEFAULT_TOPK):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"tracin_we_topk: k must be a positive int, got {k!r}")
        self.k = int(k)

    def _check_k(self, store) -> None:
        k = store_k(store)
        if k != self.k:
            raise MethodError(
                f"tracin_we_topk with k={self.k} needs stores extracted with k={self.k}, but "
                f"{store.directory} has k={k}" + (" (exact vectors: use tracin_we)" if k is None
                                                  else f" (pass k={k} or re-extract)"))

    def describe(self):
        return {"name": self.name, "k": self.k}


class TracInWENoC(TracInWE):
    """``tracin_we_noc``: TracIn-WE without common tokens (sec. 4.5).

    Args:
      common_tokens: token ids to drop; None = special tokens plus every token in
        more than ``df_threshold`` of the training store's examples.
      df_threshold: document-frequency threshold of the default list.
      special_ids: start/end token ids (default: the run's tokenizer; without a run
        the default list still catches them, as they occur in every example).
    """

    name = "tracin_we_noc"

    def __init__(self, common_tokens: Sequence[int] | None = None,
                 df_threshold: float = DEFAULT_DF_THRESHOLD,
                 special_ids: Sequence[int] | None = None):
        if not 0.0 <= float(df_threshold) <= 1.0:
            raise ValueError(f"tracin_we_noc: df_threshold must be in [0, 1], got {df_threshold}")
        self.df_threshold = float(df_threshold)
        self.given_common = None if common_tokens is None else [int(t) for t in common_tokens]
        self.special_ids = None if special_ids is None else [int(t) for t in special_ids]
        self.common_ids: np.ndarray | None = None

    def _bind(self, test_store, train_store, context):
        super()._bind(test_store, train_store, context)
        specials = self.special_ids
        if specials is None and context is not None:
            specials = list(context.special_ids)
        if self.given_common is not None:
            common = set(self.given_common)
        else:
            freq = document_frequency(train_store)
            common = set(np.flatnonzero(freq > self.df_threshold).tolist())
        common |= set(specials or ())
        self.common_ids = np.asarray(sorted(common), np.int32)
        log.info("%s: dropping %d common tokens %s", self.name, len(self.common_ids),
                 self.common_ids[:20].tolist())

    def _keep(self, token_ids):
        if self.common_ids is None:
            raise MethodError(f"{self.name}: prepare it for the stores first (method.prepare(test_store, train_store)) (it builds the common-token list)")
        return (token_ids != PAD_ID) & ~np.isin(token_ids, self.common_ids)

    def describe(self):
        return {"name": self.name, "df_threshold": self.df_threshold,
                "common_tokens": None if self.common_ids is None else self.common_ids.tolist()}


class TracInCommon(TracInWE):
    """``tracin_common``: TracIn-WE restricted to the start/end special tokens (sec. 4.5)."""

    name = "tracin_common"

    def __init__(self, special_ids: Sequence[int] | None = None):
        self.special_ids = None if special_ids is None else np.asarray(special_ids, np.int32)

    def _bind(self, test_store, train_store, context):
        super()._bind(test_store, train_store, context)
        if self.special_ids is None:
            if context is None:
                raise MethodError("tracin_common needs the start/end token ids: pass "
                                  "special_ids=... or the training run (--run)")
            self.special_ids = np.asarray(context.special_ids, np.int32)

    def _keep(self, token_ids):
        if self.special_ids is None:
            raise MethodError("tracin_common: prepare it for the stores first (method.prepare(test_store, train_store)) (it reads the special token ids)")
        return np.isin(token_ids, self.special_ids)

    def describe(self):
        return {"name": self.name,
                "special_ids": None if self.special_ids is None else self.special_ids.tolist()}


def document_frequency(store) -> np.ndarray:
    """Share of the store's examples containing each token id: ``[max_id + 1]`` float64.

    Read from the first checkpoint's ``token_ids`` (each token once per record), one
    shard at a time.
    """
    step = min(c.step for c in store.checkpoints)
    counts = np.zeros(0, np.int64)
    for shard in store.iter_shards(step, fields=("token_ids",)):
        ids = np.sort(shard["token_ids"], axis=1)
        first = np.ones(ids.shape, bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]  # count a repeated id once per record
        flat = ids[first & (ids != PAD_ID)]
        shard_counts = np.bincount(flat, minlength=len(counts))
        if len(shard_counts) > len(counts):
            counts = np.pad(counts, (0, len(shard_counts) - len(counts)))
        counts += shard_counts
    return counts / max(store.num_examples, 1)
