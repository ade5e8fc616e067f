"""Writes everything ``tracin-jax score`` produces for one retrieval into a directory.

    DIR/retrieval.npz   exact top-k ids and scores (``Rankings.load``)
    DIR/scores.jsonl    one line per (test point, proponent/opponent, rank) with top tokens
    DIR/report.html     self-contained report, tokens highlighted by contribution
    DIR/summary.json    method, stores, counts
"""
from __future__ import annotations

import json
from pathlib import Path

from tracin_jax.methods import get_method
from tracin_jax.methods.base import MethodError
from tracin_jax.methods.explain import explain_retrieval
from tracin_jax.methods.retrieval import Rankings
from tracin_jax.report.html import encoded_tokens, write_html
from tracin_jax.report.jsonl import DEFAULT_TOP_TOKENS, write_jsonl

# Neighbors per kind shown in the HTML report (the JSONL holds all of them).
DEFAULT_HTML_TOP = 10


def write_outputs(out_dir: str | Path, retrieval: Rankings, method, test_store, train_store, *,
                  context=None, options: dict | None = None, top_tokens: int = DEFAULT_TOP_TOKENS,
                  html_top: int = DEFAULT_HTML_TOP, html: bool = True, extra: dict | None = None) -> dict:
    """Explains ``retrieval`` word by word and writes the files above; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    method = get_method(method, **(options or {}))
    retrieval.save(out / "retrieval.npz")
    reports = explain_retrieval(method, retrieval, test_store, train_store, context=context)
    lines = write_jsonl(out / "scores.jsonl", reports, method.name, top_tokens)
    summary = {"method": method.describe(), "k": retrieval.k, "test_points": len(retrieval.test_ids),
               "test_store": str(test_store.directory), "train_store": str(train_store.directory),
               "train_examples": train_store.num_examples, "jsonl_lines": lines,
               "checkpoints": [{"step": w.step, "weight": w.weight}
                               for w in method.checkpoint_weights(test_store, train_store)],
               **(extra or {})}
    if html:
        test_tokens = train_tokens = label_names = None
        if context is not None:
            try:
                test_data, train_data = context.split_for(test_store), context.split_for(train_store)
                test_tokens = encoded_tokens(test_data.encoded, context.decode)
                train_tokens = encoded_tokens(train_data.encoded, context.decode)
                label_names = train_data.texts.label_names
            except MethodError:  # stores of another run: report without texts
                pass
        for r in reports:
            for kind in r.neighbors:
                r.neighbors[kind] = r.neighbors[kind][:html_top]
        write_html(out / "report.html", reports, method=method.describe(), test_tokens=test_tokens,
                   train_tokens=train_tokens, label_names=label_names,
                   extra={"train store": train_store.directory, "train examples": train_store.num_examples,
                          **(extra or {})})
        summary["html"] = str(out / "report.html")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
