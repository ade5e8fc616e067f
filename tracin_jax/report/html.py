"""A self-contained HTML report: each test point with its proponents and opponents,
training tokens highlighted by their contribution to the pair's score.

One file, inline CSS, no scripts or external resources; every text is escaped.
Its size grows linearly with test points × neighbours × tokens.

Layout: a header (method, options, counts), a legend, an index table (one row per
test point, linking to its card; marks such as planted triggers; predicted
probabilities; how many proponents share the test point's label; the proponents'
mean special-token share), then one card per test point:

- the test text, each token colored by the sum of its contributions over the shown
  proponents (contributions are checkpoint-weighted as the scores are, so these sums
  add up to the sum of the proponents' scores): the words that drive its proponents;
- proponents and opponents tables: score, training id (and mark), label (marked
  when it differs from the test point's), the special-token share of the score,
  the training text with shared tokens colored, the most positive / negative token.

Green = the token raises the score (towards proponent), red = lowers it. The shade is
|contribution| relative to the largest among the text's shared *non-special* tokens
(special tokens, outlined, are capped at the full shade, so [CLS]/[SEP] do not wash
out the words; the share column says how much they carry). Hover a token for its value.
"""
from __future__ import annotations

import datetime
import html
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from tracin_jax.files import atomic_write_text
from tracin_jax.methods.explain import ExplainedTestPoint, Neighbor, TokenContribution
from tracin_jax.report.jsonl import special_share

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#1f2328}
h1{font-size:1.5em} h2{font-size:1.15em;margin:0 0 .4em} .meta{color:#57606a;font-size:.9em}
section.test{border:1px solid #d0d7de;border-radius:8px;padding:1em;margin:1.2em 0}
.text{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em;line-height:1.8}
p.text{background:#f6f8fa;border-radius:6px;padding:.4em .6em;margin:.3em 0}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em} th,td{border-bottom:1px solid #eaeef2;
padding:.35em .5em;text-align:left;vertical-align:top} th{font-size:.85em;color:#57606a}
td.num{font-family:ui-monospace,monospace;white-space:nowrap} span.t{padding:0 .15em;border-radius:3px}
span.sp{outline:1px dashed #8c959f}
.pos{color:#116329} .neg{color:#a40e26} .legend span.t{padding:.1em .4em;margin-right:.3em}
.legend{line-height:1.7;padding-left:1.2em} .legend span.t{white-space:nowrap}
h3{font-size:1em;margin:.6em 0 .2em}
a.back{font-size:.8em;font-weight:normal;margin-left:.8em}
.mark{background:#fff8c5;border:1px solid #d4a72c;border-radius:10px;padding:0 .45em;font-size:.8em;
font-weight:600;white-space:nowrap}
td.other{background:#fff1e5;color:#953800;font-weight:600;white-space:nowrap} .wrong{color:#a40e26;font-weight:600}
td.share{font-size:.8em;color:#57606a}
.bar{display:flex;width:100%;max-width:8em;height:.6em;border-radius:3px;overflow:hidden;background:#eaeef2;margin:.3em 0 .2em}
.bar i{display:block;height:100%} i.bs{background:#8250df} i.bw{background:#1f883d}
td.tok{font-size:.85em;overflow-wrap:anywhere}
table.nb{table-layout:fixed} td.id{font-family:ui-monospace,monospace;overflow-wrap:anywhere}
td.id .mark{white-space:normal;font-family:system-ui,sans-serif}
table.index td,table.index th{padding:.2em .5em} table.index tr:hover{background:#f6f8fa}
"""

_NONE = '<span class=meta>none</span>'
_NEIGHBOR_TABLE = ('<table class="nb"><colgroup><col style="width:4%"><col style="width:8%">'
                   '<col style="width:12%"><col style="width:9%"><col style="width:11%">'
                   '<col style="width:41%"><col style="width:15%"></colgroup>'
                   "<tr><th>rank</th><th>score</th><th>train id</th><th>label</th>"
                   "<th>special / words</th><th>training example</th><th>most + / − token</th></tr>")


def _color(contribution: float, scale: float) -> str:
    if scale <= 0 or contribution == 0:
        return ""
    alpha = 0.15 + 0.75 * min(abs(contribution) / scale, 1.0)
    rgb = "22,163,74" if contribution > 0 else "220,38,38"
    return f"background:rgba({rgb},{alpha:.2f})"


def _scale(contributions: Mapping[int, float], specials: frozenset[int]) -> float:
    """Largest |contribution| among non-special tokens (all tokens when only specials)."""
    words = [abs(v) for t, v in contributions.items() if t not in specials and v != 0]
    if words:
        return max(words)
    return max((abs(v) for v in contributions.values()), default=0.0)


def token_spans(tokens: Sequence[tuple[int, str]], contributions: Mapping[int, float],
                 specials: frozenset[int] = frozenset(), what: str = "") -> str:
    """Tokens as spans, each shared token colored by its contribution."""
    scale = _scale(contributions, specials)
    out = []
    for token_id, token in tokens:
        token_id = int(token_id)
        value = contributions.get(token_id)
        text = html.escape(token)
        if value is None:
            out.append(f'<span class="t">{text}</span>')
        else:
            cls = "t sp" if token_id in specials else "t"
            out.append(f'<span class="{cls}" style="{_color(value, scale)}" '
                       f'title="{text}: {value:+.4g}{what}">{text}</span>')
    return " ".join(out)


def _label(label: int | None, label_names: Sequence[str] | None) -> str:
    if label is None:
        return "?"
    name = label_names[label] if label_names and 0 <= label < len(label_names) else str(label)
    return html.escape(str(name))


def _mark(mark) -> str:
    return f' <span class=mark>{html.escape(str(mark))}</span>' if mark else ""


def _train_mark(mark) -> str:
    return f'<br><span class=mark>{html.escape(str(mark))}</span>' if mark else ""


def _token_line(t: TokenContribution, prefix: str = "") -> str:
    cls = "pos" if t.contribution > 0 else "neg"
    return f'<div class={cls}>{prefix}{html.escape(t.token)} ({t.contribution:+.3g})</div>'


def _token_cell(n: Neighbor, specials: frozenset[int]) -> str:
    """Most positive token, the most positive word when that is a special token, and the
    most negative token: one line each, lines without a token left out ("none" if all)."""
    e = n.explanation
    lines = []
    if e.most_positive is not None:
        lines.append(_token_line(e.most_positive))
        if e.most_positive.token_id in specials:
            word = next((t for t in e.tokens if t.token_id not in specials and t.contribution > 0), None)
            if word is not None:
                lines.append(_token_line(word, "top word: "))
    if e.most_negative is not None:
        lines.append(_token_line(e.most_negative))
    return "".join(lines) or _NONE


def _share_cell(n: Neighbor, specials: frozenset[int] | None) -> str:
    share = special_share(n.explanation, specials)
    if share is None:
        return "<td class=share>n/a</td>"
    special_pct = int(round(100 * share))
    words_pct = 100 - special_pct
    parts = [f"{html.escape(t.token)} {t.contribution:+.3g}" for t in n.explanation.tokens
             if t.token_id in specials]
    title = "special tokens: " + (", ".join(parts) if parts else "none shared")
    return (f'<td class=share title="{title}"><div class=bar>'
            f'<i class=bs style="width:{special_pct}%"></i><i class=bw style="width:{words_pct}%"></i>'
            f"</div>special {special_pct}% · words {words_pct}%</td>")


def _neighbor_row(n: Neighbor, test_label: int | None, tokens_of: Callable[[int], list] | None,
                  label_names, specials: frozenset[int] | None,
                  train_marks: Mapping[int, str]) -> str:
    sp = specials or frozenset()
    contributions = {t.token_id: t.contribution for t in n.explanation.tokens}
    if tokens_of is not None:
        text = token_spans(tokens_of(n.train_position), contributions, sp)
    else:  # no run: only the shared tokens are known
        text = token_spans([(t.token_id, t.token) for t in n.explanation.tokens], contributions, sp)
    e = n.explanation
    differs = test_label is not None and n.label is not None and int(n.label) != int(test_label)
    label = (f'<td class=other title="differs from the test point\'s label">≠ {_label(n.label, label_names)}</td>'
             if differs else f"<td>{_label(n.label, label_names)}</td>")
    return (f"<tr><td class=num>{n.rank}</td><td class=num>{e.score:+.4g}</td>"
            f"<td class=id>{n.train_id}{_train_mark(train_marks.get(int(n.train_id)))}</td>{label}"
            f"{_share_cell(n, specials)}<td class=text>{text}</td>"
            f"<td class=tok>{_token_cell(n, sp)}</td></tr>")


def summed_contributions(report: ExplainedTestPoint, kind: str = "proponents") -> dict[int, float]:
    """Each shared token's contribution summed over the shown ``kind`` neighbours of
    ``report`` (checkpoint-weighted as the scores are: the values add up to the sum of
    their scores)."""
    total: dict[int, float] = defaultdict(float)
    for n in report.neighbors.get(kind, []):
        for t in n.explanation.tokens:
            total[int(t.token_id)] += t.contribution
    return dict(total)


def _probability(probabilities, test_id: int, label: int | None) -> float | None:
    if probabilities is None or label is None:
        return None
    p = probabilities.get(int(test_id))
    if p is None or not 0 <= int(label) < len(p):
        return None
    return float(p[int(label)])


def _fmt_p(p: float | None) -> str:
    return "" if p is None else f"{p:.3f}"


def _same_label(r: ExplainedTestPoint) -> tuple[int, int]:
    rows = r.neighbors.get("proponents", [])
    return sum(int(n.label) == int(r.label) for n in rows if r.label is not None), len(rows)


def _mean_share(r: ExplainedTestPoint, specials) -> float | None:
    shares = [s for n in r.neighbors.get("proponents", [])
              if (s := special_share(n.explanation, specials)) is not None]
    return float(np.mean(shares)) if shares else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _prediction(r: ExplainedTestPoint, label_names) -> str:
    wrong = r.prediction is not None and r.label is not None and int(r.prediction) != int(r.label)
    text = _label(r.prediction, label_names)
    return f'<span class=wrong title="differs from the label">✗ {text}</span>' if wrong else text


def _index(reports, label_names, probabilities, marks, specials) -> list[str]:
    has_p = probabilities is not None
    head = ("<tr><th>test id</th><th>mark</th><th>label</th><th>prediction</th>"
            + ("<th>p(prediction)</th><th>p(label)</th>" if has_p else "")
            + "<th>proponents with its label</th><th>special share of proponents (mean)</th></tr>")
    rows = []
    for r in reports:
        same, total = _same_label(r)
        mark = marks.get(int(r.test_id))
        cells = [f'<td class=num><a href="#test-{r.test_id}">{r.test_id}</a></td>',
                 f"<td>{_mark(mark)}</td>",
                 f"<td>{_label(r.label, label_names)}</td><td>{_prediction(r, label_names)}</td>"]
        if has_p:
            cells.append(f"<td class=num>{_fmt_p(_probability(probabilities, r.test_id, r.prediction))}</td>"
                         f"<td class=num>{_fmt_p(_probability(probabilities, r.test_id, r.label))}</td>")
        cells.append(f"<td class=num>{same}/{total}</td><td class=num>{_pct(_mean_share(r, specials))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    wrong = sum(r.prediction is not None and r.label is not None and int(r.prediction) != int(r.label)
                for r in reports)
    same = [_same_label(r) for r in reports]
    n_props = sum(t for _, t in same)
    marked = sum(int(r.test_id) in marks for r in reports)
    summary = (f"{len(reports)} test points, {wrong} predicted wrong; "
               f"{sum(s for s, _ in same)} of {n_props} shown proponents share their test point's label"
               + (f"; {marked} marked" if marks else ""))
    shares = [s for r in reports for n in r.neighbors.get("proponents", [])
              if (s := special_share(n.explanation, specials)) is not None]
    if shares:
        summary += f"; special tokens carry {100 * float(np.mean(shares)):.0f}% of the proponents' scores on average"
    return ['<h2 id="index">Test points</h2>', f"<p class=meta>{html.escape(summary)}.</p>",
            '<table class="index">' + head, *rows, "</table>"]


def _legend(specials) -> str:
    share = ("<b>special / words</b>: special share = Σ|contribution| of the special tokens "
             "([CLS]/[SEP], &lt;s&gt;/&lt;/s&gt;) ÷ Σ|contribution| of all the pair's shared tokens "
             '(<span style="color:#8250df">■</span> special, <span style="color:#1f883d">■</span> '
             "other shared words = the rest); a high share means the score says little about "
             "shared content words."
             if specials is not None else
             "<b>special / words</b>: n/a (the special token ids are not known).")
    items = ["score &gt; 0 = proponent (training on it lowered the test loss); a score is the sum "
             "of its shared tokens' contributions.",
             '<span class="t" style="background:rgba(22,163,74,.6)">raises the score</span>'
             '<span class="t" style="background:rgba(220,38,38,.6)">lowers the score</span>'
             '<span class="t sp">special token</span> shade = |contribution| relative to the '
             "largest among the text's non-special shared tokens (special tokens capped at full "
             "shade); uncolored = not shared. Hover a token for its value.",
             "<b>Test text</b>: each token's contribution summed over the shown proponents: the "
             "words that drive its proponents.",
             share,
             "<b>≠ label</b>: the training example's label differs from the test point's; "
             "<b>✗</b>: wrong prediction; p(…) = the model's predicted probability."]
    return '<ul class="legend meta">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def render_html(reports: Sequence[ExplainedTestPoint], *, method: dict,
                test_tokens: Callable[[int], list[tuple[int, str]]] | None = None,
                train_tokens: Callable[[int], list[tuple[int, str]]] | None = None,
                label_names: Sequence[str] | None = None, title: str = "tracin_jax influence report",
                extra: dict | None = None, special_ids: Collection[int] | None = None,
                probabilities: Mapping[int, Sequence[float]] | None = None,
                marks: Mapping[int, str] | None = None,
                train_marks: Mapping[int, str] | None = None) -> str:
    """The report as one HTML string.

    Args:
      reports: from ``methods.explain.explain_retrieval``.
      method: the method's ``describe()``.
      test_tokens / train_tokens: store position -> ``[(token_id, token string)]`` of
        the example's input (without padding); None (or a test position mapped to
        None) shows only the shared tokens.
      label_names: class names; extra: more key/values for the header.
      special_ids: token ids of the special tokens ([CLS]/[SEP], <s>/</s>:
        ``context.special_ids``); None shows no special-token shares.
      probabilities: test id -> predicted class probabilities ``[C]``; None leaves
        out p(prediction) / p(label).
      marks: test id -> a short mark shown in the index and on its card (e.g.
        "trigger", "flipped"); ids not among ``reports`` are ignored.
      train_marks: train id -> a short mark shown next to that training example
        wherever it is a proponent or opponent (e.g. "planted", "flipped").
    """
    specials = None if special_ids is None else frozenset(int(i) for i in special_ids)
    sp = specials or frozenset()
    marks = {int(k): v for k, v in (marks or {}).items() if v}
    train_marks = {int(k): v for k, v in (train_marks or {}).items() if v}
    header = {"method": method.get("name"), "options": {k: v for k, v in method.items() if k != "name"},
              "test points": len(reports),
              "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              **(extra or {})}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class=meta>"
             + "<br>".join(f"<b>{html.escape(str(k))}</b>: {html.escape(str(v))}" for k, v in header.items())
             + "</p>", _legend(specials)]
    parts.extend(_index(reports, label_names, probabilities, marks, specials))
    for r in reports:
        contributions = summed_contributions(r)
        n_props = len(r.neighbors.get("proponents", []))
        what = f" summed over {n_props} proponents"
        tokens = None if test_tokens is None else test_tokens(r.test_position)
        if tokens is not None:
            test_text = token_spans(tokens, contributions, sp, what)
        else:  # no run: only the tokens it shares with its proponents are known
            names = {t.token_id: t.token for n in r.neighbors.get("proponents", []) for t in n.explanation.tokens}
            shared = sorted(contributions, key=lambda t: -contributions[t])
            test_text = ("<i>(text not available without the run; its tokens shared with the proponents:)</i> "
                         + token_spans([(t, names[t]) for t in shared], contributions, sp, what))
        p_pred = _probability(probabilities, r.test_id, r.prediction)
        p_gold = _probability(probabilities, r.test_id, r.label)
        same, total = _same_label(r)
        meta = [f"label <b>{_label(r.label, label_names)}</b>",
                f"prediction <b>{_prediction(r, label_names)}</b>"]
        if p_pred is not None:
            meta.append(f"p(prediction) {p_pred:.3f}")
        if p_gold is not None:
            meta.append(f"p(label) {p_gold:.3f}")
        meta.append(f"{same}/{total} proponents share its label")
        parts.append(f'<section class="test" id="test-{r.test_id}"><h2>Test point {r.test_id}'
                     f'{_mark(marks.get(int(r.test_id)))}<a class=back href="#index">↑ index</a></h2>'
                     f"<p class=meta>{' · '.join(meta)}</p><p class=text>{test_text}</p>")
        for kind, heading in (("proponents", "Proponents"), ("opponents", "Opponents")):
            rows = r.neighbors.get(kind, [])
            parts.append(f"<h3>{heading} ({len(rows)})</h3>")
            if not rows:
                parts.append("<p class=meta>none</p>")
                continue
            parts.append(_NEIGHBOR_TABLE)
            parts.extend(_neighbor_row(n, r.label, train_tokens, label_names, specials, train_marks)
                         for n in rows)
            parts.append("</table>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, reports: Sequence[ExplainedTestPoint], **kwargs) -> None:
    atomic_write_text(path, render_html(reports, **kwargs))


def encoded_tokens(encoded, decode: Callable[[np.ndarray], list[str]]) -> Callable[[int], list]:
    """``position -> [(id, token)]`` over an EncodedDataset's unpadded input ids."""
    def tokens(position: int) -> list[tuple[int, str]]:
        ids = np.asarray(encoded.input_ids[position])[np.asarray(encoded.attention_mask[position]) > 0]
        return list(zip(ids.tolist(), decode(ids)))
    return tokens
