"""Influence methods over gradient stores, one registry by name (docs/method.md "Methods").

Every method returns scores with **score > 0 = proponent**; each module documents
its formula and how it maps to that convention.

    method = get_method("tracin_we_topk", k=10)
    result = top_k(method, test_store, train_store, k=100, context=run_context(run))  # tracin_jax.stages.gradients

Names: tracin_we, tracin_we_topk, tracin_we_noc, tracin_common, tracin_we_syn,
tracin_last, tracin_layer[GROUP,...], tracin_all, influence_last, representer,
tracin_tfidf.
"""
from tracin_jax.methods.base import (ArrayMethod, Block, CheckpointWeight, Method, MethodError,
                                     shared_checkpoints)
from tracin_jax.methods.context import RunContext, SplitData
from tracin_jax.methods.registry import METHODS, get_method, method_names
from tracin_jax.methods.tfidf import TracInTFIDF, lowest_tfidf_candidates
from tracin_jax.methods.tracin_last import InfluenceLast, Representer, TracInLast
from tracin_jax.methods.tracin_layer import TracInLayer
from tracin_jax.methods.tracin_syn import TracInWESyn
from tracin_jax.methods.tracin_we import TracInCommon, TracInWE, TracInWENoC, TracInWETopK
from tracin_jax.methods.retrieval import (Ranking, Rankings, ScoreMatrix, merge, precision_at_k,
                                          score_matrix, self_influence, top_k, top_k_opponents,
                                          top_k_proponents)

__all__ = [
    "ArrayMethod", "Block", "CheckpointWeight", "InfluenceLast", "METHODS", "Method",
    "MethodError", "Ranking", "Representer", "Rankings", "RunContext", "ScoreMatrix",
    "SplitData", "TracInCommon", "TracInLast", "TracInLayer", "TracInTFIDF", "TracInWE",
    "TracInWENoC", "TracInWESyn", "TracInWETopK", "get_method", "lowest_tfidf_candidates",
    "merge", "method_names", "precision_at_k", "score_matrix", "self_influence",
    "shared_checkpoints", "top_k", "top_k_opponents", "top_k_proponents",
]
