"""Data sources: TextDataset, subsampling, test-point selection, local files, TFDS (mocked)."""
import json
import logging

import numpy as np
import pytest

from tracin_jax.data import (
    TextDataset,
    default_data_config,
    load_splits,
    select_test_points,
    subsample_indices,
)


def _ds(n=10, num_classes=3, pairs=False):
    return TextDataset(texts=tuple(f"text {i}" for i in range(n)),
                       text_pairs=tuple(f"pair {i}" for i in range(n)) if pairs else None,
                       labels=np.arange(n) % num_classes, ids=np.arange(n) + 100,
                       label_names=tuple(f"c{c}" for c in range(num_classes)), name="toy")


# ----------------------------------------------------------------------------- TextDataset


def test_text_dataset_dtypes_subset_and_validation():
    ds = _ds(pairs=True)
    assert len(ds) == 10 and ds.labels.dtype == np.int32 and ds.ids.dtype == np.int64
    sub = ds.subset([7, 2])
    assert sub.texts == ("text 7", "text 2") and sub.text_pairs == ("pair 7", "pair 2")
    np.testing.assert_array_equal(sub.ids, [107, 102])
    np.testing.assert_array_equal(sub.labels, [1, 2])
    np.testing.assert_array_equal(ds.subset(ds.labels == 0).ids, [100, 103, 106, 109])
    with pytest.raises(ValueError, match="out of range"):
        ds.subset([10])
    with pytest.raises(ValueError, match="label 3 outside"):
        TextDataset(("a",), None, np.array([3]), np.array([0]), ("x", "y", "z"))
    with pytest.raises(ValueError, match="labels shape"):
        TextDataset(("a", "b"), None, np.array([0]), np.array([0, 1]), ("x",))
    with pytest.raises(ValueError, match="text_pairs"):
        TextDataset(("a", "b"), ("p",), np.array([0, 0]), np.array([0, 1]), ("x",))
    with pytest.raises(ValueError, match="not unique"):
        TextDataset(("a", "b"), None, np.array([0, 0]), np.array([1, 1]), ("x",))


def test_fingerprint_tracks_ids_labels_texts_and_pairs():
    base = _ds(pairs=True)
    assert base.fingerprint() == _ds(pairs=True).fingerprint()
    variants = [
        TextDataset(base.texts, base.text_pairs, base.labels, base.ids + 1, base.label_names),
        TextDataset(base.texts, base.text_pairs, (base.labels + 1) % 3, base.ids, base.label_names),
        TextDataset(("changed",) + base.texts[1:], base.text_pairs, base.labels, base.ids, base.label_names),
        TextDataset(base.texts, ("x",) + base.text_pairs[1:], base.labels, base.ids, base.label_names),
        TextDataset(base.texts, None, base.labels, base.ids, base.label_names),
        # same characters, different split between texts: the length prefix tells them apart
        TextDataset(("text 0text 1",) + ("",) + base.texts[2:], base.text_pairs, base.labels, base.ids,
                    base.label_names),
    ]
    prints = {base.fingerprint()} | {v.fingerprint() for v in variants}
    assert len(prints) == len(variants) + 1
    assert len(base.fingerprint()) == 64


def test_subsample_indices_deterministic_sorted_without_replacement():
    a = subsample_indices(1000, 100, [3, 0])
    np.testing.assert_array_equal(a, subsample_indices(1000, 100, [3, 0]))
    assert len(np.unique(a)) == 100 and (np.diff(a) > 0).all() and a.max() < 1000
    assert not np.array_equal(a, subsample_indices(1000, 100, [3, 1]))
    np.testing.assert_array_equal(subsample_indices(5, None, 0), np.arange(5))
    np.testing.assert_array_equal(subsample_indices(5, 9, 0), np.arange(5))
    with pytest.raises(ValueError, match="max_n"):
        subsample_indices(5, -1, 0)


def test_select_test_points_balanced_and_deterministic():
    ds = _ds(n=30, num_classes=3)
    idx = select_test_points(ds, per_class=4, seed=0)
    assert idx.dtype == np.int64 and len(idx) == 12 and len(set(idx.tolist())) == 12
    np.testing.assert_array_equal(ds.labels[idx], np.repeat([0, 1, 2], 4))
    np.testing.assert_array_equal(idx, select_test_points(ds, per_class=4, seed=0))
    assert not np.array_equal(idx, select_test_points(ds, per_class=4, seed=1))
    np.testing.assert_array_equal(ds.labels[select_test_points(ds, 2, 0, classes=[2])], [2, 2])
    with pytest.raises(ValueError, match=r"class 0 \('c0'\) of 'toy' has 10 examples"):
        select_test_points(ds, per_class=11, seed=0)


def test_default_config_fields_and_typed_overrides():
    cfg = default_data_config()
    for field in ("source", "name", "tfds_data_dir", "train_split", "eval_split", "files", "text_field",
                  "pair_field", "label_field", "label_names", "max_train", "max_eval", "seed",
                  "drop_empty", "synthetic"):
        assert field in cfg
    cfg.max_train = 5
    cfg.label_names = ["a", "b"]
    assert cfg.max_train == 5 and cfg.label_names == ("a", "b")
    with pytest.raises(TypeError):
        cfg.max_eval = "all"
    with pytest.raises(ValueError, match="source"):
        load_splits(_files_cfg("parquet", {}))


# ----------------------------------------------------------------------------- local files


def _files_cfg(source, files, **kw):
    cfg = default_data_config()
    cfg.source = source
    cfg.name = "toy"
    cfg.files = {k: str(v) for k, v in files.items()}
    cfg.train_split, cfg.eval_split = "train", "dev"
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_quotes_int_labels_and_inferred_names(tmp_path):
    train = _write(tmp_path / "train.csv",
                   'id,text,label\n0,"hello, world",1\n1,"she said ""hi""",0\n2,plain,2\n')
    dev = _write(tmp_path / "dev.csv", "id,text,label\n0,x,0\n")
    splits = load_splits(_files_cfg("csv", {"train": train, "dev": dev}))
    tr = splits["train"]
    assert tr.texts == ("hello, world", 'she said "hi"', "plain")
    np.testing.assert_array_equal(tr.labels, [1, 0, 2])
    np.testing.assert_array_equal(tr.ids, [0, 1, 2])
    assert tr.label_names == ("0", "1", "2") == splits["eval"].label_names
    assert tr.text_pairs is None and tr.name == "toy:train"


def test_string_labels_map_via_label_names_and_unknown_label_errors(tmp_path):
    train = _write(tmp_path / "train.csv", "sentence,y\ngood,pos\nbad,neg\nfine,pos\n")
    dev = _write(tmp_path / "dev.csv", "sentence,y\nok,neg\nhmm,meh\n")
    cfg = _files_cfg("csv", {"train": train, "dev": dev}, text_field="sentence", label_field="y",
                     label_names=("neg", "pos"))
    with pytest.raises(ValueError, match=r"row 1 has unknown label 'meh'"):
        load_splits(cfg)
    _write(dev, "sentence,y\nok,neg\nnice,1\n")  # integers still index label_names
    splits = load_splits(cfg)
    np.testing.assert_array_equal(splits["train"].labels, [1, 0, 1])
    np.testing.assert_array_equal(splits["eval"].labels, [0, 1])
    cfg.label_names = None  # inferred: sorted union over both splits
    _write(dev, "sentence,y\nok,neg\nhmm,meh\n")
    assert load_splits(cfg)["train"].label_names == ("meh", "neg", "pos")


def test_missing_column_lists_available_columns(tmp_path):
    train = _write(tmp_path / "train.csv", "sentence,label\na,0\n")
    cfg = _files_cfg("csv", {"train": train, "dev": train})
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'\]; available columns: "
                                         r"\['sentence', 'label'\]"):
        load_splits(cfg)


def test_empty_text_errors_or_is_dropped_and_counted(tmp_path, caplog):
    train = _write(tmp_path / "train.csv", "text,label\na,0\n,1\n   ,0\nb,1\n")
    dev = _write(tmp_path / "dev.csv", "text,label\nc,0\n")
    cfg = _files_cfg("csv", {"train": train, "dev": dev})
    with pytest.raises(ValueError, match="row 1 has empty text"):
        load_splits(cfg)
    cfg.drop_empty = True
    with caplog.at_level(logging.WARNING):
        tr = load_splits(cfg)["train"]
    assert tr.texts == ("a", "b")
    np.testing.assert_array_equal(tr.ids, [0, 3])  # original row indices
    assert "skipped 2 rows with empty text" in caplog.text


def test_glue_mnli_tsv_layout_with_pairs(tmp_path):
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
              "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
    rows = [
        ("0", "31193", "31193n", "government", "( ( x ) )", "( y )", "(ROOT x)", "(ROOT y)",
         'He said "Conceptually cream skimming', "Product and geography are what make it work.",
         "neutral", "neutral"),
        ("1", "101457", "101457e", "telephone", "(a)", "(b)", "(ROOT a)", "(ROOT b)",
         "you know during the season", "You lose the things to the following level.",
         "entailment", "entailment"),
        ("2", "134793", "134793c", "fiction", "(a)", "(b)", "(ROOT a)", "(ROOT b)",
         "Gays and lesbians.", "Heterosexuals.", "contradiction", "contradiction"),
    ]
    train = _write(tmp_path / "train.tsv", header + "".join("\t".join(r) + "\n" for r in rows))
    cfg = _files_cfg("tsv", {"train": train, "dev": train}, text_field="sentence1",
                     pair_field="sentence2", label_field="gold_label",
                     label_names=("entailment", "neutral", "contradiction"))
    tr = load_splits(cfg)["train"]
    assert tr.texts[0] == 'He said "Conceptually cream skimming'  # quotes kept verbatim (QUOTE_NONE)
    assert tr.text_pairs == tuple(r[9] for r in rows)
    np.testing.assert_array_equal(tr.labels, [1, 0, 2])
    _write(train, header + "0\tonly\tthree\n")
    with pytest.raises(ValueError, match="row 0 has 3 fields but the header has 12"):
        load_splits(cfg)


def test_jsonl_source(tmp_path):
    lines = [{"t": "first", "l": 2, "extra": 1}, {"t": "second", "l": "1"}, {"t": "third", "l": 0}]
    train = _write(tmp_path / "train.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    cfg = _files_cfg("jsonl", {"train": train, "dev": train}, text_field="t", label_field="l")
    tr = load_splits(cfg)["train"]
    assert tr.texts == ("first", "second", "third")
    np.testing.assert_array_equal(tr.labels, [2, 1, 0])
    _write(train, json.dumps({"t": "a", "l": 0}) + "\n" + json.dumps({"text": "b", "l": 1}) + "\n")
    with pytest.raises(ValueError, match=r"row 1 \(line 2\) is missing column\(s\) \['t'\]; "
                                         r"available columns: \['l', 'text'\]"):
        load_splits(cfg)
    _write(train, "{not json\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        load_splits(cfg)


def test_file_subsampling_keeps_row_ids(tmp_path):
    n = 50
    train = _write(tmp_path / "train.csv", "text,label\n" + "".join(f"row{i},{i % 2}\n" for i in range(n)))
    cfg = _files_cfg("csv", {"train": train, "dev": train}, max_train=10, max_eval=10, seed=4)
    splits = load_splits(cfg)
    tr = splits["train"]
    assert len(tr) == 10 and tr.texts == tuple(f"row{i}" for i in tr.ids)
    np.testing.assert_array_equal(tr.labels, tr.ids % 2)
    np.testing.assert_array_equal(tr.ids, subsample_indices(n, 10, [4, 0]))
    assert not np.array_equal(tr.ids, splits["eval"].ids)  # train and eval draw separately
    np.testing.assert_array_equal(load_splits(cfg)["train"].ids, tr.ids)


def test_label_threshold_and_missing_files(tmp_path):
    train = _write(tmp_path / "train.csv", "text,score\na,0.2\nb,0.5\nc,0.9\n")
    cfg = _files_cfg("csv", {"train": train, "dev": train}, label_field="score", label_threshold=0.5,
                     label_names=("not_toxic", "toxic"))
    np.testing.assert_array_equal(load_splits(cfg)["train"].labels, [0, 1, 1])
    with pytest.raises(ValueError, match="no entry for split 'dev'"):
        load_splits(_files_cfg("csv", {"train": train}))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_splits(_files_cfg("csv", {"train": train, "dev": tmp_path / "missing.csv"}))


# ----------------------------------------------------------------------------- TFDS (mocked)


def _tfds_reference(tfds, name, split, reader):
    """All rows of a split read directly with TFDS, as bytes texts."""
    if reader == "load":
        return list(tfds.as_numpy(tfds.load(name, split=split, shuffle_files=False)))
    source = tfds.data_source(name, split=split)
    return [{k: v.encode() if isinstance(v, str) else v for k, v in source[i].items()}
            for i in range(len(source))]


@pytest.mark.parametrize("name,eval_split,force_load", [
    ("ag_news_subset", "test", False),
    ("ag_news_subset", "test", True),
    ("glue/mnli", "validation_matched", False),
    ("wikipedia_toxicity_subtypes", "validation", False),
])
def test_tfds_sources_under_mock_data(name, eval_split, force_load, monkeypatch, caplog):
    """ag_news_subset reads with tfds.data_source (no TensorFlow), the others with tfds.load;
    force_load: data_source fails (e.g. data prepared as tfrecord) and load is the fallback."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow")
    import tensorflow_datasets.text.glue  # noqa: F401  (ENVIRONMENT.md: registers glue/*)

    cfg = default_data_config()
    cfg.source, cfg.name, cfg.eval_split = "tfds", name, eval_split
    cfg.max_train = 12
    reader = "load" if force_load or name != "ag_news_subset" else "data_source"
    with tfds.testing.mock_data(num_examples=20):
        reference = {"train": _tfds_reference(tfds, name, "train", reader),
                     "eval": _tfds_reference(tfds, name, eval_split, reader)}
        if force_load:
            def no_array_record(*args, **kwargs):
                raise NotImplementedError("no array_record files")
            monkeypatch.setattr(tfds, "data_source", no_array_record)
        with caplog.at_level(logging.WARNING):
            splits = load_splits(cfg)
    assert ("reading with tfds.load" in caplog.text) == force_load
    tr, ev = splits["train"], splits["eval"]
    assert len(tr) == 12 and len(ev) == 20
    np.testing.assert_array_equal(tr.ids, subsample_indices(20, 12, [0, 0]))
    text_field = {"ag_news_subset": "description", "glue/mnli": "premise"}.get(name, "text")
    for key, ds in (("train", tr), ("eval", ev)):
        rows = [reference[key][i] for i in ds.ids]
        assert all(isinstance(t, str) for t in ds.texts)  # bytes decoded
        assert list(ds.texts) == [r[text_field].decode() for r in rows]
        if name == "wikipedia_toxicity_subtypes":
            np.testing.assert_array_equal(ds.labels, [int(r["toxicity"] >= 0.5) for r in rows])
        else:
            np.testing.assert_array_equal(ds.labels, [r["label"] for r in rows])
        if name == "glue/mnli":
            assert list(ds.text_pairs) == [r["hypothesis"].decode() for r in rows]
        else:
            assert ds.text_pairs is None
    assert tr.name == f"{name}:train" and ev.name == f"{name}:{eval_split}"
    expected_names = {"ag_news_subset": ("World", "Sports", "Business", "Sci/Tech"),
                      "glue/mnli": ("entailment", "neutral", "contradiction"),
                      "wikipedia_toxicity_subtypes": ("not_toxic", "toxic")}[name]
    assert tr.label_names == ev.label_names == expected_names


def test_tfds_unknown_field_lists_features():
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = default_data_config()
    cfg.source, cfg.name, cfg.text_field = "tfds", "ag_news_subset", "body"
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match=r"missing feature\(s\) \['body'\].*description"):
            load_splits(cfg)
