"""JSONL output of a retrieval: one line per (test point, proponent/opponent, rank)."""
from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from tracin_jax.files import atomic_write_text
from tracin_jax.methods.explain import ExplainedTestPoint, PairExplanation

# Tokens listed per line (largest |contribution| first among them, then by sign).
DEFAULT_TOP_TOKENS = 5
_KIND = {"proponents": "proponent", "opponents": "opponent"}


def special_share(explanation: PairExplanation, special_ids: Collection[int] | None) -> float | None:
    """Share of a pair's score carried by special tokens ([CLS]/[SEP], <s>/</s>):

        Σ_{w special} |contribution(w)| / Σ_w |contribution(w)|

    over all the pair's shared tokens, in [0, 1]. None when the special ids are not
    known, the method has no decomposition, or every contribution is 0.
    """
    if special_ids is None or not explanation.tokens:
        return None
    specials = {int(i) for i in special_ids}
    total = sum(abs(t.contribution) for t in explanation.tokens)
    if not total > 0:
        return None
    return sum(abs(t.contribution) for t in explanation.tokens if t.token_id in specials) / total


def jsonl_rows(reports: Sequence[ExplainedTestPoint], method: str,
               top_tokens: int = DEFAULT_TOP_TOKENS,
               special_ids: Collection[int] | None = None) -> Iterator[dict]:
    """Rows ``{method, test_id, test_label, kind, rank, train_id, train_label, score,
    top_tokens, most_positive_token, most_negative_token, special_share}``; tokens are
    ``{token, id, contribution}`` (empty lists / null for undecomposable methods);
    ``special_share`` is ``special_share(explanation, special_ids)`` (null without
    ``special_ids`` or a decomposition)."""
    specials = None if special_ids is None else {int(i) for i in special_ids}
    for report in reports:
        for kind, neighbors in report.neighbors.items():
            for n in neighbors:
                explained = n.explanation.to_json(top=top_tokens)
                yield {"method": method, "test_id": report.test_id, "test_label": report.label,
                       "kind": _KIND[kind], "rank": n.rank, "train_id": n.train_id,
                       "train_label": n.label, "score": n.explanation.score,
                       "top_tokens": explained["tokens"],
                       "most_positive_token": explained["most_positive_token"],
                       "most_negative_token": explained["most_negative_token"],
                       "special_share": special_share(n.explanation, specials)}


def write_jsonl(path: str | Path, reports: Sequence[ExplainedTestPoint], method: str,
                top_tokens: int = DEFAULT_TOP_TOKENS,
                special_ids: Collection[int] | None = None) -> int:
    """Writes ``jsonl_rows`` to ``path`` (atomically); returns the number of lines."""
    lines = [json.dumps(row, allow_nan=False) for row in jsonl_rows(reports, method, top_tokens, special_ids)]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
