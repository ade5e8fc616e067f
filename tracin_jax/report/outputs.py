"""Writes everything ``tracin-jax score`` produces for one retrieval into a directory.

    DIR/retrieval.npz   exact top-k ids and scores (``Rankings.load``)
    DIR/scores.jsonl    one line per (test point, proponent/opponent, rank) with top tokens
                        and the special-token share of the score
    DIR/report.html     self-contained report, tokens highlighted by contribution
    DIR/summary.json    method, stores, counts
"""
from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from tracin_jax.files import atomic_write_json
from tracin_jax.methods import get_method
from tracin_jax.methods.base import MethodError
from tracin_jax.methods.explain import ExplainedTestPoint, explain_retrieval
from tracin_jax.methods.retrieval import Rankings
from tracin_jax.report.html import encoded_tokens, write_html
from tracin_jax.report.jsonl import DEFAULT_TOP_TOKENS, write_jsonl

# Neighbors per kind shown in the HTML report (the JSONL holds all of them).
DEFAULT_HTML_TOP = 10


def write_outputs(out_dir: str | Path, retrieval: Rankings, method, test_store, train_store, *,
                  context=None, options: dict | None = None, top_tokens: int = DEFAULT_TOP_TOKENS,
                  html_top: int = DEFAULT_HTML_TOP, html: bool = True, extra: dict | None = None,
                  special_ids: Collection[int] | None = None, marks: Mapping[int, str] | None = None,
                  train_marks: Mapping[int, str] | None = None,
                  more_tests: Sequence[tuple[Rankings, object]] = (), arguments: dict | None = None) -> dict:
    """Explains ``retrieval`` word by word and writes the files above; returns the summary.

    Args (beyond the stores and the method):
      special_ids: special token ids ([CLS]/[SEP], <s>/</s>) for the special-token
        share of each JSONL and HTML row; default ``context.special_ids``, else the
        method's own ``special_ids`` option, else no shares.
      marks / train_marks: test / train id -> short text ("trigger", "planted",
        "flipped") shown in the HTML report.
      more_tests: ``(rankings, test store)`` pairs of more test points scored with the
        same method against the same train store (e.g. the demo's planted-trigger
        points, in their own store): appended to the HTML report only (test ids
        already shown are skipped); retrieval.npz and scores.jsonl hold ``retrieval``.
      arguments: what made these outputs (method, stores, k...), kept in summary.json so a
        later command can tell whether the directory holds its own results.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    method = get_method(method, **(options or {}))
    retrieval.save(out / "retrieval.npz")
    reports = explain_retrieval(method, retrieval, test_store, train_store, context=context)
    if special_ids is None:
        special_ids = _special_ids(method, context)
    lines = write_jsonl(out / "scores.jsonl", reports, method.name, top_tokens, special_ids)
    summary = {"method": method.describe(), "k": retrieval.k, "test_points": len(retrieval.test_ids),
               "test_store": str(test_store.directory), "train_store": str(train_store.directory),
               "train_examples": train_store.num_examples, "jsonl_lines": lines,
               "checkpoints": [{"step": w.step, "weight": w.weight}
                               for w in method.checkpoint_weights(test_store, train_store)],
               **(extra or {})}
    if arguments is not None:
        summary["arguments"] = arguments
    if html:
        groups = [(reports, test_store)] + [
            (explain_retrieval(method, more, store, train_store, context=context), store)
            for more, store in more_tests]
        shown, test_tokens, probabilities = _html_test_points(groups, method, train_store, context)
        train_tokens = label_names = None
        if context is not None:
            try:
                train_data = context.split_for(train_store)
                train_tokens = encoded_tokens(train_data.encoded, context.decode)
                label_names = train_data.texts.label_names
            except MethodError:  # stores of another run: report without texts
                pass
        for r in shown:
            for kind in r.neighbors:
                r.neighbors[kind] = r.neighbors[kind][:html_top]
        write_html(out / "report.html", shown, method=method.describe(), test_tokens=test_tokens,
                   train_tokens=train_tokens, label_names=label_names, special_ids=special_ids,
                   probabilities=probabilities, marks=marks, train_marks=train_marks,
                   extra={"train store": train_store.directory, "train examples": train_store.num_examples,
                          **(extra or {})})
        summary["html"] = str(out / "report.html")
        if more_tests:
            summary["html_test_points"] = len(shown)
    atomic_write_json(out / "summary.json", summary)
    return summary


def _html_test_points(groups, method, train_store, context):
    """The test points of every ``(reports, store)`` group as one list (a test id once,
    first group first), with one ``position -> tokens`` over all groups (group g's
    positions offset by the sizes of the stores before it; None where a store's texts
    are not known) and test id -> predicted probabilities."""
    shown: list[ExplainedTestPoint] = []
    starts: list[int] = []
    token_fns: list[Callable[[int], list] | None] = []
    probabilities: dict[int, np.ndarray] = {}
    seen: set[int] = set()
    offset = 0
    for reports, store in groups:
        fn = None
        if context is not None:
            try:
                fn = encoded_tokens(context.split_for(store).encoded, context.decode)
            except MethodError:  # stores of another run: report without texts
                pass
        starts.append(offset)
        token_fns.append(fn)
        for test_id, p in predicted_probabilities(store, method, train_store).items():
            probabilities.setdefault(test_id, p)
        for r in reports:
            if r.test_id not in seen:
                seen.add(r.test_id)
                shown.append(dataclasses.replace(r, test_position=r.test_position + offset))
        offset += store.num_examples
    if all(fn is None for fn in token_fns):
        return shown, None, probabilities

    def tokens(position: int):
        g = bisect.bisect_right(starts, position) - 1
        fn = token_fns[g]
        return None if fn is None else fn(position - starts[g])
    return shown, tokens, probabilities


def _special_ids(method, context) -> list[int] | None:
    """The run's special token ids, else the method's ``special_ids`` option, else None."""
    if context is not None:
        try:
            return [int(i) for i in context.special_ids]
        except (AttributeError, MethodError):
            pass
    ids = getattr(method, "special_ids", None)
    return None if ids is None else [int(i) for i in np.asarray(ids).ravel()]


def predicted_probabilities(test_store, method=None, train_store=None) -> dict[int, np.ndarray]:
    """Test id -> softmax probabilities ``[C]`` at the checkpoint whose predictions the
    report shows (the method's last; the store's last without a method), from the
    stored ``p_minus_y`` (= p − onehot(label))."""
    steps = [c.step for c in test_store.checkpoints]
    if method is not None:
        steps = [w.step for w in method.checkpoint_weights(test_store, train_store)] or steps
    data = test_store.load(max(steps), fields=("example_id", "label", "p_minus_y"))
    p = np.asarray(data["p_minus_y"], np.float64).copy()
    p[np.arange(len(p)), np.asarray(data["label"], np.int64)] += 1.0
    return {int(e): row for e, row in zip(data["example_id"], p)}
