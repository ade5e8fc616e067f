"""JSONL output of a retrieval: one line per (test point, proponent/opponent, rank)."""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from tracin_jax.methods.explain import ExplainedTestPoint

# Tokens listed per line (largest |contribution| first among them, then by sign).
DEFAULT_TOP_TOKENS = 5
_KIND = {"proponents": "proponent", "opponents": "opponent"}


def jsonl_rows(reports: Sequence[ExplainedTestPoint], method: str,
               top_tokens: int = DEFAULT_TOP_TOKENS) -> Iterator[dict]:
    """Rows ``{method, test_id, test_label, kind, rank, train_id, train_label, score,
    top_tokens, most_positive_token, most_negative_token}``; tokens are
    ``{token, id, contribution}`` (empty lists / null for undecomposable methods)."""
    for report in reports:
        for kind, neighbors in report.neighbors.items():
            for n in neighbors:
                explained = n.explanation.to_json(top=top_tokens)
                yield {"method": method, "test_id": report.test_id, "test_label": report.label,
                       "kind": _KIND[kind], "rank": n.rank, "train_id": n.train_id,
                       "train_label": n.label, "score": n.explanation.score,
                       "top_tokens": explained["tokens"],
                       "most_positive_token": explained["most_positive_token"],
                       "most_negative_token": explained["most_negative_token"]}


def write_jsonl(path: str | Path, reports: Sequence[ExplainedTestPoint], method: str,
                top_tokens: int = DEFAULT_TOP_TOKENS) -> int:
    """Writes ``jsonl_rows`` to ``path``; returns the number of lines."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in jsonl_rows(reports, method, top_tokens):
            f.write(json.dumps(row, allow_nan=False) + "\n")
            count += 1
    return count
