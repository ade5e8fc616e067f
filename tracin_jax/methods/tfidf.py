"""``tracin_tfidf`` (paper appendix G, eq. 7) and TF-IDF candidate selection (sec. 4.5).

    tracin_tfidf(x, x') = Σ_c η_c · tfidf_cos(x, x') · ⟨p−y, p'−y'⟩_c

tracin_last with the feature similarity ⟨a, a'⟩ replaced by the TF-IDF cosine of
the two texts (scikit-learn ``TfidfVectorizer`` fitted on the training texts,
rows L2-normalised so the dot product is the cosine). The paper writes a leading
minus; like tracin_last, ⟨p−y, p'−y'⟩ > 0 is the proponent direction, so we drop
it (docs/method.md: score > 0 = proponent). The cosine is ≥ 0, so the sign is the sign of
the loss-gradient agreement.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from tracin_jax.methods.base import Method, shared_checkpoints
from tracin_jax.methods.context import require_context

# Rows of the training TF-IDF matrix per dense similarity block (candidate search).
_CANDIDATE_BLOCK = 4096


class TracInTFIDF(Method):
    """``tracin_tfidf``; needs the run (texts). ``vectorizer_options`` go to ``TfidfVectorizer``."""

    name = "tracin_tfidf"
    fields = ("p_minus_y",)

    def __init__(self, **vectorizer_options):
        self.vectorizer_options = dict(vectorizer_options)
        self.vectorizer: TfidfVectorizer | None = None
        self._test_matrix = self._train_matrix = None

    def _bind(self, test_store, train_store, context):
        shared_checkpoints(test_store, train_store)
        context = require_context(context, self.name, "the texts of both stores")
        train_texts = context.split_for(train_store).joined_texts()
        test_texts = context.split_for(test_store).joined_texts()
        self.vectorizer = TfidfVectorizer(**self.vectorizer_options).fit(train_texts)
        self._train_matrix = self.vectorizer.transform(train_texts).tocsr()
        self._test_matrix = self.vectorizer.transform(test_texts).tocsr()

    def cosine(self, test_positions, train_positions) -> np.ndarray:
        """TF-IDF cosine ``[M, N]`` float64 between test and train rows (store positions)."""
        return (self._test_matrix[np.asarray(test_positions)]
                @ self._train_matrix[np.asarray(train_positions)].T).toarray()

    def score_block(self, test, train, step, mesh=None):
        agreement = (np.asarray(test["p_minus_y"], np.float64)
                     @ np.asarray(train["p_minus_y"], np.float64).T)
        return (self.cosine(test["position"], train["position"]) * agreement).astype(np.float32)

    def self_scores(self, block, step, mesh=None):
        pmy = np.asarray(block["p_minus_y"], np.float64)
        rows = self._test_matrix[np.asarray(block["position"])]
        norms = np.asarray(rows.multiply(rows).sum(axis=1)).reshape(-1)  # 1, or 0 for no known word
        return (norms * (pmy * pmy).sum(axis=1)).astype(np.float32)

    def describe(self):
        return {"name": self.name, **self.vectorizer_options}


def lowest_tfidf_candidates(test_texts: Sequence[str], train_texts: Sequence[str],
                            train_ids: Sequence[int], num_candidates: int,
                            **vectorizer_options) -> list[np.ndarray]:
    """Per test text, the ids of the ``num_candidates`` training texts least similar to it.

    docs/method.md "No-word-overlap experiment": the candidates of x' are the training examples
    with the lowest TF-IDF cosine to x' (5,000 in the paper). Ties are broken by
    training position. Returns one ``[num_candidates] int64`` array per test text
    (pass them as ``per_test_candidates`` to retrieval).
    """
    train_ids = np.asarray(train_ids, np.int64)
    if len(train_ids) != len(train_texts):
        raise ValueError(f"{len(train_texts)} train texts but {len(train_ids)} train ids")
    if not 1 <= num_candidates <= len(train_texts):
        raise ValueError(f"num_candidates must be in [1, {len(train_texts)}], got {num_candidates}")
    vectorizer = TfidfVectorizer(**vectorizer_options).fit(train_texts)
    train_matrix = vectorizer.transform(train_texts).tocsr()
    test_matrix = vectorizer.transform(test_texts).tocsr()
    cos = np.empty((len(test_texts), len(train_texts)), np.float32)
    for start in range(0, len(train_texts), _CANDIDATE_BLOCK):
        stop = start + _CANDIDATE_BLOCK
        cos[:, start:stop] = (test_matrix @ train_matrix[start:stop].T).toarray()
    order = np.argsort(cos, axis=1, kind="stable")[:, :num_candidates]
    return [train_ids[row] for row in order]
