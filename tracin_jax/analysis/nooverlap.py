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

import logging
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from tracin_jax.methods import lowest_tfidf_candidates

log = logging.getLogger(__name__)

# The paper's no-overlap block, and the random control drawn from the same candidates.
NOOVERLAP_METHODS = ("tracin_we", "tracin_we_noc", "tracin_common", "tracin_last", "random")
DEFAULT_NUM_CANDIDATES = 5000  # paper sec. 5: 5,000 of 50,000 training sentences


def nooverlap_defaults() -> ml_collections.ConfigDict:
    """``cfg.nooverlap``: candidate count (the sweep's methods live in ``cfg.sweep``)."""
    return ml_collections.ConfigDict({"num_candidates": DEFAULT_NUM_CANDIDATES})


def lowest_tfidf_sets(test_ds, train_ds, num_candidates: int) -> dict[int, np.ndarray]:
    """``{test id: [num_candidates] training ids}`` with the lowest TF-IDF cosine (ties by position)."""
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
