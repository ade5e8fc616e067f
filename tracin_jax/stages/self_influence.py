"""Stage "a training store → its examples ranked by self-influence" (``tracin-jax self-influence``).

Self-influence ``score(x, x)`` (for TracIn: ``Σ_c η_c ‖∇ℓ(x)‖²`` over the method's
parameters) is large for examples the model keeps having to fit — mislabelled ones among
them — so inspecting the training set in that order is the usual mislabel search. With
known flipped ids (``--flipped ids.json``) the ranking is scored: ROC-AUC, recall when
inspecting the top 10% / 20%, precision among the top |flipped|, side by side with random
inspection and with ranking by the final checkpoint's training loss alone, so a user sees
when the loss is as good.

Outputs (``out_dir``): ``self_influence.jsonl`` (one line per example, rank order, with the
tokens carrying each score for the word-level methods), ``report.html`` (the top of the
list, tokens highlighted), ``summary.json`` (method, counts, detection metrics).
"""
from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tracin_jax.deletion.metrics import mislabel_detection
from tracin_jax.errors import DataError, UsageError
from tracin_jax.files import atomic_write_json, atomic_write_text
from tracin_jax.methods import get_method, self_influence
from tracin_jax.methods.explain import gather_records, pair_contributions
from tracin_jax.report.html import CSS, token_spans
from tracin_jax.store import GradientStore

log = logging.getLogger(__name__)

INSPECT_FRACTIONS = (0.1, 0.2)  # shares of the training set inspected, for recall


def detection_table(scores: np.ndarray, loss: np.ndarray, flipped: np.ndarray) -> dict:
    """ROC-AUC, recall at ``INSPECT_FRACTIONS`` and precision at |flipped| of ranking by
    ``scores``, by ``loss`` and at random (expected values)."""
    n, f = len(flipped), int(flipped.sum())
    out = {}
    for name, values in (("self_influence", scores), ("loss", loss)):
        row = {"auc": None, "precision_at_num_flipped": None}
        for fraction in INSPECT_FRACTIONS:
            m = mislabel_detection(values, flipped, fraction)
            row["auc"], row["precision_at_num_flipped"] = m["auc"], m["precision_at_num_flipped"]
            row[f"recall_at_{int(100 * fraction)}pct"] = m["recall_at_fraction"]
        out[name] = row
    out["random"] = {"auc": 0.5, "precision_at_num_flipped": f / n,
                     **{f"recall_at_{int(100 * fr)}pct": max(1, int(round(fr * n))) / n for fr in INSPECT_FRACTIONS}}
    return out


def rank_self_influence(method: str, store: GradientStore, out_dir: str | Path, *, context=None,
                        options: dict | None = None, flipped_ids: Sequence[int] | None = None,
                        html_top: int = 200, top_tokens: int = 5) -> dict:
    """Writes the outputs above for ``store``'s examples; returns the summary."""
    bound = get_method(method, **(options or {})).prepare(store, store, context)
    ids, scores = self_influence(bound, store, context=context)
    weights = bound.checkpoint_weights(store, store)
    last = max(c.step for c in store.checkpoints)
    block = store.load(last, fields=("example_id", "label", "loss"))
    if not np.array_equal(block["example_id"], ids):
        raise DataError(f"{store.directory}: example ids differ between reads", "the store changed while it was read")
    labels, loss = np.asarray(block["label"]), np.asarray(block["loss"], np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))  # largest first, ties by position
    flipped = None
    if flipped_ids is not None:
        known = set(int(i) for i in flipped_ids)
        unknown = known - set(ids.tolist())
        if unknown:
            raise DataError(f"{len(unknown)} flipped ids are not in {store.directory}, e.g. {sorted(unknown)[:5]}")
        flipped = np.isin(ids, list(known))
        if not 0 < flipped.sum() < len(flipped):
            raise DataError("mislabel detection needs both flipped and clean examples")
    names, texts_of = None, None
    if context is not None:
        try:
            data = context.split_for(store)
            names = list(data.texts.label_names)
            enc = data.encoded

            def tokens_of(pos):
                row = np.asarray(enc.input_ids[pos])[np.asarray(enc.attention_mask[pos]) > 0]
                return list(zip(row.tolist(), context.decode(row)))
            texts_of = tokens_of
        except ValueError as e:  # MethodError / DataError: a report without texts, not no report
            log.warning("self-influence report without texts: %s", e)
    shown = order[:max(int(html_top), 0)]
    contributions = {}
    if bound.decomposable and len(shown):
        records = gather_records(store, shown, bound.read_fields(), [w.step for w in weights])
        for j, pos in enumerate(shown):
            one = {s: {k: v[j:j + 1] for k, v in b.items()} for s, b in records.items()}
            tok, val = pair_contributions(bound, one, one, weights)
            contributions[int(pos)] = dict(zip(tok.tolist(), val.tolist()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for rank, pos in enumerate(order, start=1):
        row = {"rank": rank, "train_id": int(ids[pos]), "label": int(labels[pos]),
               "score": float(scores[pos]), "loss": float(loss[pos])}
        if names:
            row["label_name"] = names[int(labels[pos])]
        if flipped is not None:
            row["flipped"] = bool(flipped[pos])
        if int(pos) in contributions:
            top = sorted(contributions[int(pos)].items(), key=lambda kv: -abs(kv[1]))[:top_tokens]
            decoded = context.decode([t for t, _ in top]) if context is not None and top else [f"#{t}" for t, _ in top]
            row["top_tokens"] = [{"token": s, "id": int(t), "contribution": float(v)}
                                 for s, (t, v) in zip(decoded, top)]
        lines.append(json.dumps(row))
    atomic_write_text(out / "self_influence.jsonl", "\n".join(lines) + "\n")
    summary = {"method": bound.describe(), "store": str(store.directory), "examples": int(len(ids)),
               "checkpoints": [{"step": w.step, "weight": w.weight} for w in weights],
               "top": [int(ids[p]) for p in order[:10]]}
    if flipped is not None:
        summary["flipped"] = int(flipped.sum())
        summary["detection"] = detection_table(scores, loss, flipped)
    atomic_write_text(out / "report.html", _html(bound, ids, labels, scores, loss, flipped, shown, contributions,
                                                 texts_of, names, summary))
    atomic_write_json(out / "summary.json", summary)
    summary["files"] = {"jsonl": str(out / "self_influence.jsonl"), "html": str(out / "report.html"),
                        "summary": str(out / "summary.json")}
    return summary


def _html(method, ids, labels, scores, loss, flipped, shown, contributions, texts_of, names, summary) -> str:
    desc = method.describe()
    rows = []
    for rank, pos in enumerate(shown, start=1):
        pos = int(pos)
        label = html.escape(names[labels[pos]]) if names else str(int(labels[pos]))
        mark = ' <span class="mark">flipped</span>' if flipped is not None and flipped[pos] else ""
        contrib = contributions.get(pos, {})
        if texts_of is not None:
            text = token_spans(texts_of(pos), contrib)
        elif contrib:
            text = token_spans([(t, f"#{t}") for t in contrib], contrib)
        else:
            text = ""
        rows.append(f"<tr><td class=num>{rank}</td><td class=num>{int(ids[pos])}{mark}</td><td>{label}</td>"
                    f"<td class=num>{scores[pos]:.4g}</td><td class=num>{loss[pos]:.3g}</td>"
                    f"<td class=text>{text}</td></tr>")
    detection = ""
    if "detection" in summary:
        d = summary["detection"]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in d["random"])
        body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(
            f"<td class=num>{'' if v is None else f'{v:.3f}'}</td>" for v in d[name].values()) + "</tr>"
            for name in ("self_influence", "loss", "random"))
        detection = (f"<h2>Finding the {summary['flipped']} flipped labels</h2><table><tr><th>ranking by</th>"
                     f"{head}</tr>{body}</table><p class=meta>random: expected values. When the loss "
                     "ranks as well as self-influence, the loss alone is enough for this data.</p>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>self-influence: {html.escape(desc['name'])}</title><style>{CSS}</style></head><body>",
        f"<h1>Training examples by self-influence ({html.escape(desc['name'])})</h1>",
        f"<p class=meta>{summary['examples']} examples of {html.escape(summary['store'])}; largest first. "
        "Self-influence score(x, x) is large for examples the model keeps having to fit (mislabelled ones "
        "among them). Tokens are highlighted by their share of the score.</p>",
        detection,
        f"<h2>Top {len(shown)}</h2><table><tr><th>rank</th><th>train id</th><th>label</th><th>score</th>"
        "<th>loss</th><th>text</th></tr>", *rows, "</table></body></html>"])


def read_flipped(path: str | Path | None) -> list[int] | None:
    """A JSON list of training ids with known wrong labels (or None)."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--flipped {path}: {e}", "give a JSON list of training ids") from None
    if not isinstance(data, list) or not all(isinstance(i, int) for i in data):
        raise UsageError(f"--flipped {path} must hold a JSON list of integer training ids")
    return data
