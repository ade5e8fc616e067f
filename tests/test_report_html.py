"""The HTML report (report/html.py), parsed with html.parser: index and anchors, test-text
highlighting, special-token shares, clean token cells, escaping, marks; the JSONL's
special_share; the test points of several stores merged for one report (outputs.py)."""
import json
import time
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from tracin_jax.methods.explain import ExplainedTestPoint, Neighbor, PairExplanation, TokenContribution
from tracin_jax.report import jsonl_rows, render_html, special_share
from tracin_jax.report.html import summed_contributions
from tracin_jax.report.outputs import _html_test_points, predicted_probabilities

CLS, SEP = 101, 102
SPECIALS = (CLS, SEP)
VOCAB = {CLS: "[CLS]", SEP: "[SEP]", 1: "good", 2: "bad", 3: "movie", 4: "plot", 5: "<script>alert(1)</script>"}
# Allowed tags: anything else in a page means something was not escaped.
TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "b", "i", "br", "a",
        "span", "div", "table", "tr", "th", "td", "section", "ul", "li", "colgroup", "col"}


def _pair(test_id, train_id, contributions: dict[int, float]) -> PairExplanation:
    tokens = sorted((TokenContribution(t, VOCAB[t], c) for t, c in contributions.items()),
                    key=lambda t: (-t.contribution, t.token_id))
    return PairExplanation(test_id, train_id, sum(contributions.values()), tuple(tokens))


def _neighbor(kind, rank, train_id, label, contributions, test_id=1):
    return Neighbor(kind, rank, train_id, train_id, label, _pair(test_id, train_id, contributions))


def _point(test_id, position, label, prediction, proponents, opponents):
    return ExplainedTestPoint(test_id, position, label, prediction,
                              {"proponents": proponents, "opponents": opponents})


def _reports():
    """Test 1 (label 0): proponent 10 = [CLS] +3, good +1 (special 75%), proponent 11 with
    another label = good +1, movie +0.5, bad -0.25; opponent 12 = bad -2 only (no positive
    token), opponent 13 from an undecomposable method (no tokens). Test 2: no opponents."""
    one = _point(1, 0, 0, 0,
                 [_neighbor("proponents", 1, 10, 0, {CLS: 3.0, 1: 1.0}),
                  _neighbor("proponents", 2, 11, 1, {1: 1.0, 3: 0.5, 2: -0.25})],
                 [_neighbor("opponents", 1, 12, 1, {2: -2.0}),
                  Neighbor("opponents", 2, 13, 13, 1, PairExplanation(1, 13, -0.5, ()))])
    two = _point(2, 1, 1, 0, [_neighbor("proponents", 1, 14, 1, {SEP: 0.5, 4: 0.5}, test_id=2)], [])
    return [one, two]


TEST_TEXTS = {0: [CLS, 1, 3, 1, SEP], 1: [CLS, 4, 2, SEP]}
TRAIN_TEXTS = {10: [CLS, 1, 4, SEP], 11: [CLS, 1, 3, 2, SEP], 12: [CLS, 2, SEP], 13: [CLS, 3, SEP],
               14: [CLS, 4, 4, SEP]}


def _tokens(texts):
    return lambda position: [(t, VOCAB[t]) for t in texts[position]]


class Page(HTMLParser):
    """Elements as (tag, attrs, text, classes of enclosing elements, enclosing ids)."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[dict] = []
        self.elements: list[dict] = []
        self.tags: set[str] = set()
        self.feed(page)
        for el in self.elements:  # text pieces joined once (appending to strings is quadratic)
            el["text"] = "".join(el["text"])

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag in ("meta", "br", "col"):
            return
        el = {"tag": tag, "attrs": dict(attrs), "text": [], "parents": list(self.stack)}
        self.stack.append(el)
        self.elements.append(el)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for el in self.stack:
            el["text"].append(data)

    def find(self, tag, cls=None, inside=None):
        def ok(el):
            if el["tag"] != tag or (cls and cls not in el["attrs"].get("class", "").split()):
                return False
            return inside is None or any(p is inside for p in el["parents"])
        return [el for el in self.elements if ok(el)]


def _page(reports=None, **kwargs):
    kwargs.setdefault("special_ids", SPECIALS)
    kwargs.setdefault("label_names", ["pos", "neg"])
    kwargs.setdefault("test_tokens", _tokens(TEST_TEXTS))
    kwargs.setdefault("train_tokens", _tokens(TRAIN_TEXTS))
    return render_html(_reports() if reports is None else reports, method={"name": "tracin_we"}, **kwargs)


def test_index_has_one_row_per_test_point_with_working_anchors():
    page = _page(probabilities={1: [0.8, 0.2], 2: [0.7, 0.3]})
    doc = Page(page)
    ids = {el["attrs"]["id"] for el in doc.elements if "id" in el["attrs"]}
    [index] = doc.find("table", "index")
    rows = [tr for tr in doc.find("tr", inside=index) if doc.find("td", inside=tr)]
    assert len(rows) == 2
    for tr, test_id in zip(rows, (1, 2)):
        [link] = doc.find("a", inside=tr)
        assert link["attrs"]["href"] == f"#test-{test_id}" and f"test-{test_id}" in ids
    cells = [[td["text"].strip() for td in doc.find("td", inside=tr)] for tr in rows]
    # id, mark, label, prediction, p(prediction), p(label), proponents with its label, special share
    assert cells[0][:8] == ["1", "", "pos", "pos", "0.800", "0.800", "1/2", "38%"]  # mean of 75%, 0%
    assert cells[1][2:8] == ["neg", "✗ pos", "0.700", "0.300", "1/1", "50%"]
    assert "index" in ids
    for section in doc.find("section", "test"):  # every card links back to the index
        assert any(a["attrs"].get("href") == "#index" for a in doc.find("a", inside=section))
    assert len(doc.find("section", "test")) == 2


def test_test_text_is_highlighted_by_its_proponents_contributions():
    doc = Page(_page())
    sections = doc.find("section", "test")
    for section in sections:
        [text] = doc.find("p", "text", inside=section)
        assert any("background:rgba(" in s["attrs"].get("style", "")
                   for s in doc.find("span", "t", inside=text))
    [text] = doc.find("p", "text", inside=sections[0])
    spans = {s["text"]: s["attrs"] for s in doc.find("span", "t", inside=text)}
    # "good": +1 in both proponents -> +2, the largest word: full shade
    assert spans["good"]["title"].startswith("good: +2 ") and "rgba(22,163,74,0.90)" in spans["good"]["style"]
    assert spans["movie"]["title"].startswith("movie: +0.5 ")
    assert "[CLS]: +3 " in spans["[CLS]"]["title"] and "sp" in spans["[CLS]"]["class"].split()
    assert "title" not in spans["[SEP]"]  # shared with no proponent: uncolored
    assert summed_contributions(_reports()[0]) == {CLS: 3.0, 1: 2.0, 3: 0.5, 2: -0.25}
    # without the run's texts the shared tokens are still shown, highlighted
    doc = Page(_page(test_tokens=None, train_tokens=None))
    for section in doc.find("section", "test"):
        [text] = doc.find("p", "text", inside=section)
        assert any("background:rgba(" in s["attrs"].get("style", "") for s in doc.find("span", inside=text))


def test_special_share_of_a_constructed_pair():
    e = _pair(1, 10, {CLS: 3.0, 1: 1.0})
    assert special_share(e, SPECIALS) == pytest.approx(0.75)
    assert special_share(_pair(1, 11, {1: 1.0, 2: -0.25}), SPECIALS) == 0.0
    assert special_share(_pair(1, 12, {CLS: -1.0, 1: 1.0}), SPECIALS) == pytest.approx(0.5)  # |.|
    assert special_share(e, None) is None and special_share(PairExplanation(1, 2, 0.0, ()), SPECIALS) is None
    doc = Page(_page())
    shares = [td["text"].strip() for td in doc.find("td", "share")]
    assert shares[:4] == ["special 75% · words 25%", "special 0% · words 100%",
                          "special 0% · words 100%", "n/a"]
    bar = doc.find("td", "share")[0]
    widths = [i["attrs"]["style"] for i in doc.find("i", inside=bar)]
    assert widths == ["width:75%", "width:25%"]
    assert "special share" in doc.find("ul", "legend")[0]["text"]  # the definition is stated
    rows = list(jsonl_rows(_reports(), "tracin_we", special_ids=SPECIALS))
    assert [r["special_share"] for r in rows][:4] == [pytest.approx(0.75), 0.0, 0.0, None]
    assert {"top_tokens", "most_positive_token", "most_negative_token", "score"} <= set(rows[0])
    assert all(r["special_share"] is None for r in jsonl_rows(_reports(), "tracin_we"))
    json.dumps(rows, allow_nan=False)
    assert all(td["text"].strip() == "n/a" for td in Page(_page(special_ids=None)).find("td", "share"))


def test_token_cells_have_one_line_per_token_and_no_dashes():
    page = _page()
    assert "–" not in page
    doc = Page(page)
    cells = doc.find("td", "tok")
    lines = [[d["text"] for d in doc.find("div", inside=td)] for td in cells]
    assert lines[0] == ["[CLS] (+3)", "top word: good (+1)"]  # the top token is special
    assert lines[1] == ["good (+1)", "bad (-0.25)"]
    assert lines[2] == ["bad (-2)"]  # no positive token: no empty line
    assert lines[3] == [] and cells[3]["text"].strip() == "none"  # no decomposition
    for td in doc.find("td"):
        assert td["text"].strip() not in ("–", "-", "—")


def test_labels_that_differ_from_the_test_label_are_marked():
    doc = Page(_page())
    first = doc.find("section", "test")[0]
    rows = [tr for tr in doc.find("tr", inside=first) if doc.find("td", inside=tr)]
    other = [bool(doc.find("td", "other", inside=tr)) for tr in rows]
    assert other == [False, True, True, True]
    assert doc.find("td", "other", inside=rows[1])[0]["text"].strip() == "≠ neg"


def test_marks_appear_in_the_index_cards_and_rows():
    page = _page(marks={2: "trigger zorp", 99: "not shown"}, train_marks={11: "flipped"})
    doc = Page(page)
    [index] = doc.find("table", "index")
    assert [m["text"] for m in doc.find("span", "mark", inside=index)] == ["trigger zorp"]
    cards = doc.find("section", "test")
    assert [m["text"] for m in doc.find("span", "mark", inside=doc.find("h2", inside=cards[1])[0])] \
        == ["trigger zorp"]
    assert not doc.find("span", "mark", inside=doc.find("h2", inside=cards[0])[0])
    assert [m["text"] for m in doc.find("span", "mark", inside=cards[0])] == ["flipped"]
    assert "not shown" not in page  # marks of test points not in the report are ignored
    assert "1 marked" in page


def test_hostile_text_is_escaped():
    hostile = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    reports = _reports()
    reports[0].neighbors["proponents"][0] = Neighbor(
        "proponents", 1, 10, 10, 0, PairExplanation(1, 10, 1.0, (TokenContribution(5, VOCAB[5], 1.0),)))
    page = render_html(reports, method={"name": hostile}, label_names=[hostile, "b<i>"],
                       test_tokens=_tokens({0: [5, 1], 1: [4]}),
                       train_tokens=lambda p: [(5, VOCAB[5]), (1, hostile)], special_ids=SPECIALS,
                       marks={1: hostile}, train_marks={10: hostile}, title=hostile,
                       extra={hostile: hostile})
    doc = Page(page)
    assert doc.tags <= TAGS, doc.tags - TAGS
    attributes = {k for el in doc.elements for k in el["attrs"]}
    assert attributes <= {"lang", "class", "style", "title", "href", "id"}, attributes
    assert "<script" not in page and "<img" not in page and "<i>" not in page
    assert hostile in doc.find("h1")[0]["text"]  # shown as text
    assert VOCAB[5] in doc.find("p", "text")[0]["text"]
    assert any(hostile in m["text"] for m in doc.find("span", "mark"))


def test_size_is_linear_in_test_points_and_neighbours():
    rng = np.random.default_rng(0)

    def reports(n_tests, k=10):
        out = []
        for m in range(n_tests):
            neighbors = {}
            for kind, sign in (("proponents", 1), ("opponents", -1)):
                neighbors[kind] = [_neighbor(kind, j + 1, 100 + j, int(rng.integers(2)),
                                             {CLS: sign * 0.5, 1: sign * 1.0, 3: 0.1 * sign, 2: -0.1 * sign},
                                             test_id=m) for j in range(k)]
            out.append(_point(m, m % 2, m % 2, 0, neighbors["proponents"], neighbors["opponents"]))
        return out

    texts = {p: [CLS, 1, 3, 2, 4, 1, 3, SEP] * 4 for p in range(200)}
    kwargs = dict(test_tokens=_tokens(texts), train_tokens=_tokens(texts),
                  probabilities={m: [0.6, 0.4] for m in range(100)}, marks={3: "trigger"})
    small = _page(reports(25), **kwargs)
    start = time.perf_counter()
    large = _page(reports(100), **kwargs)
    elapsed = time.perf_counter() - start
    assert len(large) / len(small) < 4.2  # 4x the test points: ~4x the bytes
    assert len(large) < 8_000_000 and elapsed < 10
    assert len(Page(large).find("section", "test")) == 100


class _FakeStore:
    def __init__(self, ids, labels, probs):
        self.checkpoints = [SimpleNamespace(step=5), SimpleNamespace(step=9)]
        self.num_examples = len(ids)
        self.ids, self.labels, self.probs = np.asarray(ids), np.asarray(labels), np.asarray(probs, float)
        self.loaded = []

    def load(self, step, fields=None):
        self.loaded.append(step)
        onehot = np.eye(self.probs.shape[1])[self.labels]
        return {"example_id": self.ids, "label": self.labels, "p_minus_y": self.probs - onehot}


def test_more_test_points_are_merged_with_their_own_texts_and_probabilities():
    main = _FakeStore([1, 2], [0, 1], [[0.8, 0.2], [0.7, 0.3]])
    extra = _FakeStore([2, 7], [1, 0], [[0.1, 0.9], [0.4, 0.6]])
    assert predicted_probabilities(main)[2] == pytest.approx([0.7, 0.3])
    assert main.loaded == [9]  # the last checkpoint
    seven = _point(7, 1, 0, 1, [_neighbor("proponents", 1, 10, 0, {1: 1.0}, test_id=7)], [])
    dup = _point(2, 0, 1, 1, [], [])
    texts = {id(main): {0: [CLS, 1], 1: [CLS, 2]}, id(extra): {0: [CLS, 3], 1: [CLS, 4, SEP]}}
    context = SimpleNamespace(split_for=lambda store: SimpleNamespace(encoded=store),
                              decode=lambda ids: [VOCAB[int(i)] for i in ids])
    import tracin_jax.report.outputs as outputs
    original = outputs.encoded_tokens
    outputs.encoded_tokens = lambda store, decode: _tokens(texts[id(store)])
    try:
        shown, tokens, probabilities = _html_test_points([(_reports(), main), ([dup, seven], extra)],
                                                         None, None, context)
    finally:
        outputs.encoded_tokens = original
    assert [r.test_id for r in shown] == [1, 2, 7]  # test 2 once, from the first store
    assert [r.test_position for r in shown] == [0, 1, 3]
    assert [t for _, t in tokens(3)] == ["[CLS]", "plot", "[SEP]"]
    assert [t for _, t in tokens(1)] == ["[CLS]", "bad"]
    assert probabilities[2] == pytest.approx([0.7, 0.3]) and probabilities[7] == pytest.approx([0.4, 0.6])
    page = Page(render_html(shown, method={"name": "m"}, test_tokens=tokens, probabilities=probabilities,
                            special_ids=SPECIALS, marks={7: "trigger"}))
    assert len(page.find("section", "test")) == 3
