"""``tracin-jax score`` / ``explain`` end to end on a tiny trained run; the HTML report."""
import json
import re

import numpy as np
import pytest

from tracin_jax import cli
from tracin_jax.methods import MethodError, top_k
from tracin_jax.methods.explain import ExplainedTestPoint, explain_pair
from tracin_jax.rankings import Rankings
from tracin_jax.stages.gradients import run_context, run_gradients
from tracin_jax.report.html import render_html
from tracin_jax.store import GradientStore
from tracin_jax.train import train

from test_train import tiny_config

TOP = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_score")
    train(tiny_config(), root / "run", progress=False)
    for split in ("train", "test"):
        run_gradients(root / "run", split, root / split, shard_size=64, progress=False)
    return root


def _score(run, out, *extra):
    return cli.main(["score", "--method", "tracin_we_topk", "--test", str(run / "test"),
                     "--train", str(run / "train"), "--run", str(run / "run"), "--top", str(TOP),
                     "--out", str(out), "--no-progress", *extra])


def test_score_writes_jsonl_and_html(run, tmp_path, capsys):
    assert _score(run, tmp_path / "out") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    test, train_store = GradientStore(run / "test"), GradientStore(run / "train")
    assert summary["train_examples"] == train_store.num_examples == 256
    expected = top_k("tracin_we_topk", test, train_store, TOP)
    rows = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == test.num_examples * 2 * TOP == summary["jsonl_lines"]
    context = run_context(run / "run")
    for row in rows[:: 7]:
        m = list(expected.test_ids).index(row["test_id"])
        ranking = expected.proponents if row["kind"] == "proponent" else expected.opponents
        assert row["train_id"] == ranking.ids[m, row["rank"] - 1]
        assert row["score"] == pytest.approx(float(ranking.scores[m, row["rank"] - 1]), rel=1e-6)
        e = explain_pair("tracin_we_topk", test, row["test_id"], train_store, row["train_id"],
                         context=context)
        assert sum(t.contribution for t in e.tokens) == pytest.approx(row["score"], rel=1e-4, abs=1e-9)
        if e.most_positive is not None:
            assert row["most_positive_token"]["token"] == e.most_positive.token
            assert row["most_positive_token"]["contribution"] == pytest.approx(e.most_positive.contribution)
        assert len(row["top_tokens"]) == min(5, len(e.tokens))
    assert [r["rank"] for r in rows[:TOP]] == list(range(1, TOP + 1))
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    for test_id in expected.test_ids:
        assert f'id="test-{test_id}"' in page
    assert "Proponents" in page and "Opponents" in page and "background:rgba(" in page
    loaded = Rankings.load(tmp_path / "out" / "retrieval.npz")
    np.testing.assert_array_equal(loaded.proponents.ids, expected.proponents.ids)


def test_parts_merged_equal_single_run(run, tmp_path, capsys):
    assert _score(run, tmp_path / "single", "--no-html") == 0
    for i in range(2):
        assert _score(run, tmp_path / "parts", "--part", f"{i}/2") == 0
    parts = sorted((tmp_path / "parts").glob("part-*-of-2.npz"))
    assert len(parts) == 2
    assert _score(run, tmp_path / "merged", "--merge", *map(str, parts)) == 0
    single = Rankings.load(tmp_path / "single" / "retrieval.npz")
    merged = Rankings.load(tmp_path / "merged" / "retrieval.npz")
    for kind in ("proponents", "opponents"):
        np.testing.assert_array_equal(single.ranking(kind).ids, merged.ranking(kind).ids)
        np.testing.assert_array_equal(single.ranking(kind).scores, merged.ranking(kind).scores)
    assert (tmp_path / "single" / "scores.jsonl").read_text() == \
        (tmp_path / "merged" / "scores.jsonl").read_text()


def test_explain_prints_the_decomposition(run, capsys):
    test = GradientStore(run / "test")
    test_id = int(test.load(test.checkpoints[0].step)["example_id"][0])
    train_id = int(top_k("tracin_we_topk", test, GradientStore(run / "train"), 1).proponents.ids[0, 0])
    args = ["explain", "--test", str(run / "test"), "--train", str(run / "train"), "--run",
            str(run / "run"), "--test-id", str(test_id), "--train-id", str(train_id)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"test {test_id} <- train {train_id}" in out and "(proponent)" in out
    score = float(out.split("score ")[1].split()[0])
    total = float(out.strip().splitlines()[-1].split(":")[-1])
    assert total == pytest.approx(score, rel=1e-5)
    assert "[CLS]" in out or "[SEP]" in out  # tokens are decoded with the run's tokenizer
    assert cli.main(args + ["--json", "--top", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["score"] == pytest.approx(score, rel=1e-5) and len(data["tokens"]) <= 2


def test_score_errors_name_the_problem(run, tmp_path, capsys):
    """One line on stderr, exit 1 (or 2 for usage), no traceback; --debug raises instead."""
    def fails(args, code, pattern):
        assert cli.main(args) == code
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
        assert re.search(pattern, err), err
    store_args = ["--test", str(run / "test"), "--train", str(run / "train"), "--out", str(tmp_path),
                  "--no-progress"]
    fails(["score", "--method", "tracin_we", *store_args], 1, "k=10")
    fails(["score", "--method", "tracin_foo", *store_args], 1, "unknown method 'tracin_foo'")
    fails(["score", "--method", "tracin_last", "--part", "2", *store_args], 2, "I/N")
    with pytest.raises(MethodError, match="k=10"):
        cli.main(["--debug", "score", "--method", "tracin_we", *store_args])


def test_html_escapes_text_and_colors_by_sign():
    from tracin_jax.methods.explain import Neighbor, PairExplanation, TokenContribution
    e = PairExplanation(1, 2, 0.5, (TokenContribution(7, "<b>&", 0.75), TokenContribution(8, "x", -0.25)))
    report = ExplainedTestPoint(1, 0, 0, 1, {"proponents": [Neighbor("proponents", 1, 2, 0, 0, e)],
                                          "opponents": []})
    page = render_html([report], method={"name": "tracin_we"}, label_names=["a<script>", "b"],
                       train_tokens=lambda p: [(7, "<b>&"), (9, "plain"), (8, "x")])
    assert "<b>&" not in page and "&lt;b&gt;&amp;" in page and "a&lt;script&gt;" in page
    assert "<script" not in page
    assert "rgba(22,163,74,0.90)" in page  # the largest positive token, full shade
    assert "rgba(220,38,38,0.40)" in page  # a third of the scale, negative
    assert '<span class="t">plain</span>' in page  # not shared: uncolored
