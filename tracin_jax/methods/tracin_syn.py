"""``tracin_we_syn``: TracIn-WE with synonym matching (paper appendix H).

Over the top-k tokens ``w_1..w_k`` of x and ``w'_1..w'_k`` of x' (the ``G^k``
vectors of a top-k store), per checkpoint c with embedding table E_c:

    WGS(w, w') = ⟨G_w(x), G_w'(x')⟩ · 1[cos(E_c[w], E_c[w']) ≥ threshold]   (threshold 0.7)
    m* = one-to-one assignment maximising Σ_i |WGS(w_i, w'_m(i))|           (eq. 8)
    tracin_we_syn(x, x') = Σ_c η_c Σ_i WGS(w_i, w'_m*(i))

solved with ``scipy.optimize.linear_sum_assignment``. A token is its own synonym
(cos = 1), so exact matches always qualify; with no other synonym pair the score
equals tracin_we_topk. Sign as tracin_we (the paper's minus dropped): score > 0 =
proponent. Cost: one k×k assignment per pair and checkpoint, on the host; pairs
whose non-zero entries already form a partial permutation skip the solver.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from tracin_jax.kernels import PAD_ID
from tracin_jax.methods.base import Method, MethodError, shared_checkpoints, store_k
from tracin_jax.methods.context import require_context
from tracin_jax.models import get_word_embedding_table

DEFAULT_SYNONYM_THRESHOLD = 0.7  # appendix H: "We set the threshold to be 0.7"


class TracInWESyn(Method):
    """``tracin_we_syn``; needs top-k stores (any k, the same for both) and the run."""

    name = "tracin_we_syn"
    fields = ("token_ids", "vectors")

    def __init__(self, threshold: float = DEFAULT_SYNONYM_THRESHOLD):
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"tracin_we_syn: threshold is a cosine, must be in [-1, 1], got {threshold}")
        self.threshold = float(threshold)
        self.context = None
        self._unit_table: tuple[int, np.ndarray] | None = None

    def _bind(self, test_store, train_store, context):
        shared_checkpoints(test_store, train_store)
        self.context = require_context(context, self.name, "the word-embedding table of each checkpoint")
        ks = {store_k(test_store), store_k(train_store)}
        if None in ks or len(ks) != 1:
            raise MethodError(
                f"tracin_we_syn matches the top-k tokens of both examples (appendix H): both stores "
                f"need the same k, got k={store_k(test_store)} ({test_store.directory}) and "
                f"k={store_k(train_store)} ({train_store.directory})")

    def unit_embeddings(self, step: int) -> np.ndarray:
        """Row-normalised word-embedding table of checkpoint ``step``: [V, D] float64."""
        if self._unit_table is None or self._unit_table[0] != step:
            table = np.asarray(get_word_embedding_table(self.context.params(step)), np.float64)
            norms = np.linalg.norm(table, axis=1, keepdims=True)
            self._unit_table = (step, table / np.where(norms > 0, norms, 1.0))
        return self._unit_table[1]

    def wgs(self, test, train, step) -> np.ndarray:
        """Synonym-masked word gradient similarities ``[M, N, k, k]`` float64."""
        unit = self.unit_embeddings(step)
        a_ids, b_ids = np.asarray(test["token_ids"]), np.asarray(train["token_ids"])
        for ids in (a_ids, b_ids):
            if ids.max(initial=PAD_ID) >= len(unit):
                raise MethodError(f"token id {ids.max()} outside the embedding table of {len(unit)} rows")
        a_vecs = np.asarray(test["vectors"], np.float64)
        b_vecs = np.asarray(train["vectors"], np.float64)
        dots = np.einsum("mtd,nsd->mnts", a_vecs, b_vecs)
        a_unit, b_unit = unit[np.maximum(a_ids, 0)], unit[np.maximum(b_ids, 0)]
        cos = np.einsum("mtd,nsd->mnts", a_unit, b_unit)
        valid = (a_ids != PAD_ID)[:, None, :, None] & (b_ids != PAD_ID)[None, :, None, :]
        return np.where(valid & (cos >= self.threshold), dots, 0.0)

    def score_block(self, test, train, step, mesh=None):
        wgs = self.wgs(test, train, step)
        out = np.zeros(wgs.shape[:2], np.float64)
        nonzero = wgs != 0
        for m, n in zip(*np.nonzero(nonzero.any(axis=(2, 3)))):
            w = wgs[m, n]
            nz = nonzero[m, n]
            if nz.sum(axis=0).max() <= 1 and nz.sum(axis=1).max() <= 1:
                out[m, n] = w.sum()  # already one-to-one: the optimum keeps every entry
            else:
                rows, cols = linear_sum_assignment(np.abs(w), maximize=True)
                out[m, n] = w[rows, cols].sum()
        return out.astype(np.float32)

    def describe(self):
        return {"name": self.name, "threshold": self.threshold}
