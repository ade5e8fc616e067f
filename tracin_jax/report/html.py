"""A self-contained HTML report: each test point with its proponents and opponents,
training tokens highlighted by their contribution to the pair's score.

One file, inline CSS, no scripts or external resources; every text is escaped.
Green = the token pushes the score up (towards proponent), red = down; the shade
is |contribution| relative to the largest in that pair. Hover a token for its value.
"""
from __future__ import annotations

import datetime
import html
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tracin_jax.methods.explain import Neighbor, ExplainedTestPoint

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#1f2328}
h1{font-size:1.5em} h2{font-size:1.15em;margin:0 0 .4em} .meta{color:#57606a;font-size:.9em}
section.test{border:1px solid #d0d7de;border-radius:8px;padding:1em;margin:1.2em 0}
.text{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em;line-height:1.7}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em} th,td{border-bottom:1px solid #eaeef2;
padding:.35em .5em;text-align:left;vertical-align:top} th{font-size:.85em;color:#57606a}
td.num{font-family:ui-monospace,monospace;white-space:nowrap} span.t{padding:0 .15em;border-radius:3px}
.pos{color:#116329} .neg{color:#a40e26} .legend span{padding:.1em .4em;border-radius:3px;margin-right:.5em}
h3{font-size:1em;margin:.6em 0 .2em}
"""


def _color(contribution: float, scale: float) -> str:
    if scale <= 0 or contribution == 0:
        return ""
    alpha = 0.15 + 0.75 * min(abs(contribution) / scale, 1.0)
    rgb = "22,163,74" if contribution > 0 else "220,38,38"
    return f"background:rgba({rgb},{alpha:.2f})"


def _token_spans(tokens: Sequence[tuple[int, str]], contributions: dict[int, float]) -> str:
    """Tokens as spans, each shared token colored by its contribution."""
    scale = max((abs(v) for v in contributions.values()), default=0.0)
    out = []
    for token_id, token in tokens:
        value = contributions.get(int(token_id))
        if value is None:
            out.append(f'<span class="t">{html.escape(token)}</span>')
        else:
            out.append(f'<span class="t" style="{_color(value, scale)}" '
                       f'title="{html.escape(token)}: {value:+.4g}">{html.escape(token)}</span>')
    return " ".join(out)


def _label(label: int | None, label_names: Sequence[str] | None) -> str:
    if label is None:
        return "?"
    name = label_names[label] if label_names and 0 <= label < len(label_names) else str(label)
    return html.escape(name)


def _token_cell(t) -> str:
    if t is None:
        return "–"
    cls = "pos" if t.contribution > 0 else "neg"
    return f'<span class="{cls}">{html.escape(t.token)} ({t.contribution:+.3g})</span>'


def _neighbor_row(n: Neighbor, tokens_of: Callable[[int], list] | None,
                  label_names) -> str:
    contributions = {t.token_id: t.contribution for t in n.explanation.tokens}
    if tokens_of is not None:
        text = _token_spans(tokens_of(n.train_position), contributions)
    else:  # no run: only the shared tokens are known
        text = _token_spans([(t.token_id, t.token) for t in n.explanation.tokens], contributions)
    e = n.explanation
    return (f"<tr><td class=num>{n.rank}</td><td class=num>{e.score:+.4g}</td>"
            f"<td class=num>{n.train_id}</td><td>{_label(n.label, label_names)}</td>"
            f"<td class=text>{text}</td><td>{_token_cell(e.most_positive)}<br>"
            f"{_token_cell(e.most_negative)}</td></tr>")


def render_html(reports: Sequence[ExplainedTestPoint], *, method: dict,
                test_tokens: Callable[[int], list[tuple[int, str]]] | None = None,
                train_tokens: Callable[[int], list[tuple[int, str]]] | None = None,
                label_names: Sequence[str] | None = None, title: str = "tracin_jax influence report",
                extra: dict | None = None) -> str:
    """The report as one HTML string.

    Args:
      reports: from ``methods.explain.explain_retrieval``.
      method: the method's ``describe()``.
      test_tokens / train_tokens: store position -> ``[(token_id, token string)]`` of
        the example's input (without padding); None shows only shared tokens.
      label_names: class names; extra: more key/values for the header.
    """
    header = {"method": method.get("name"), "options": {k: v for k, v in method.items() if k != "name"},
              "test points": len(reports),
              "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              **(extra or {})}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class=meta>"
             + "<br>".join(f"<b>{html.escape(str(k))}</b>: {html.escape(str(v))}" for k, v in header.items())
             + "</p>",
             '<p class="legend meta">score &gt; 0 = proponent (training on it lowered the test loss). '
             '<span style="background:rgba(22,163,74,.6)">token raises the score</span>'
             '<span style="background:rgba(220,38,38,.6)">token lowers the score</span></p>']
    for r in reports:
        test_text = (_token_spans(test_tokens(r.test_position), {}) if test_tokens is not None
                     else "<i>(text not available without the run)</i>")
        parts.append(f'<section class="test" id="test-{r.test_id}"><h2>Test point {r.test_id}</h2>'
                     f"<p class=meta>label <b>{_label(r.label, label_names)}</b> · prediction "
                     f"<b>{_label(r.prediction, label_names)}</b></p><p class=text>{test_text}</p>")
        for kind, heading in (("proponents", "Proponents"), ("opponents", "Opponents")):
            rows = r.neighbors.get(kind, [])
            parts.append(f"<h3>{heading} ({len(rows)})</h3>")
            if not rows:
                parts.append("<p class=meta>none</p>")
                continue
            parts.append("<table><tr><th>rank</th><th>score</th><th>train id</th><th>label</th>"
                         "<th>training example</th><th>most +/− token</th></tr>")
            parts.extend(_neighbor_row(n, train_tokens, label_names) for n in rows)
            parts.append("</table>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, reports: Sequence[ExplainedTestPoint], **kwargs) -> None:
    Path(path).write_text(render_html(reports, **kwargs), encoding="utf-8")


def encoded_tokens(encoded, decode: Callable[[np.ndarray], list[str]]) -> Callable[[int], list]:
    """``position -> [(id, token)]`` over an EncodedDataset's unpadded input ids."""
    def tokens(position: int) -> list[tuple[int, str]]:
        ids = np.asarray(encoded.input_ids[position])[np.asarray(encoded.attention_mask[position]) > 0]
        return list(zip(ids.tolist(), decode(ids)))
    return tokens
