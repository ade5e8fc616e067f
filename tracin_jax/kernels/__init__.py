"""Pure array kernels: per-token vectors, pair scores, streaming top-K.

Nothing here imports models or data: inputs are arrays of token ids and gradients.
"""
from tracin_jax.kernels.pair_scores import (
    default_backend,
    gram,
    pair_scores_dense,
    pair_scores_sparse,
    prepare_a_side,
    pair_token_contributions,
    pair_token_contributions_jit,
)
from tracin_jax.kernels.token_vectors import (
    PAD_ID,
    TOPK_BY,
    position_norms,
    token_vectors,
    token_vectors_batch,
    validate_token_ids,
)
from tracin_jax.kernels.topk import (
    init_topk,
    merge_topk,
    running_topk_update,
)

__all__ = [
    "PAD_ID",
    "TOPK_BY",
    "default_backend",
    "gram",
    "init_topk",
    "merge_topk",
    "pair_scores_dense",
    "pair_scores_sparse",
    "prepare_a_side",
    "pair_token_contributions",
    "pair_token_contributions_jit",
    "position_norms",
    "running_topk_update",
    "token_vectors",
    "token_vectors_batch",
    "validate_token_ids",
]
