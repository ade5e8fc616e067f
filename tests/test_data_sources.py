"""Data sources: TextDataset, subsampling, test-point selection, local files (csv / tsv /
jsonl / parquet, text or pre-tokenised), strict labels and errors, TFDS (mocked)."""
import json
import logging

import numpy as np
import pytest

from tracin_jax.data import (
    TextDataset,
    WordTokenizer,
    default_data_config,
    encode_dataset,
    load_splits,
    select_test_points,
    subsample_indices,
)
from tracin_jax.errors import ConfigError, DataError


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
    for field in ("source", "name", "tfds_data_dir", "train_split", "eval_split", "files", "columns",
                  "encoding", "text_field", "pair_field", "label_field", "label_names", "max_train",
                  "max_eval", "seed", "drop_empty", "synthetic"):
        assert field in cfg
    cfg.max_train = 5
    cfg.label_names = ["a", "b"]
    assert cfg.max_train == 5 and cfg.label_names == ("a", "b")
    with pytest.raises(TypeError):
        cfg.max_eval = "all"
    assert cfg.encoding == "utf-8" and cfg.columns is None
    assert cfg.files.to_dict() == {"train": None, "eval": None}  # predeclared for --config.data.files.*
    cfg.columns = ["text", "label"]
    assert cfg.columns == ("text", "label")
    with pytest.raises(ConfigError, match="data.source='xml'"):
        load_splits(_files_cfg("xml", {}))


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
    with pytest.raises(ConfigError, match="no entry for split 'dev' \\(nor 'eval'\\)"):
        load_splits(_files_cfg("csv", {"train": train}))
    with pytest.raises(DataError, match="does not exist"):
        load_splits(_files_cfg("csv", {"train": train, "dev": tmp_path / "missing.csv"}))


# ----------------------------------------------------------------------------- formats


def _write_parquet(path, columns):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path)
    return path


def test_headerless_tsv_with_columns(tmp_path):
    train = _write(tmp_path / "train.tsv", 'a "quoted" film\t1\nnot good\t0\n\nfine\t1\n')
    cfg = _files_cfg("tsv", {"train": train, "dev": train}, columns=("text", "label"),
                     label_names=("negative", "positive"))
    tr = load_splits(cfg)["train"]
    assert tr.texts == ('a "quoted" film', "not good", "fine")  # first row is data; blank line skipped
    np.testing.assert_array_equal(tr.labels, [1, 0, 1])
    np.testing.assert_array_equal(tr.ids, [0, 1, 2])
    _write(train, "a\t1\nb\t0\textra\n")
    with pytest.raises(DataError, match=r"row 1 has 3 fields but data.columns names 2"):
        load_splits(cfg)
    _write(train, "text\tlabel\na\t1\n")  # a header, but columns says there is none
    with pytest.raises(DataError, match=r"first row \['text', 'label'\] is a header.*data.columns=None"):
        load_splits(cfg)
    cfg.columns = ("text", "text")
    with pytest.raises(ConfigError, match="unique"):
        load_splits(cfg)


def test_headerless_csv_with_extra_columns_and_header_csv(tmp_path):
    train = _write(tmp_path / "train.csv", '7,"hello, world",1\n8,plain,0\n')
    cfg = _files_cfg("csv", {"train": train, "dev": train}, columns=("id", "sentence", "y"),
                     text_field="sentence", label_field="y")
    tr = load_splits(cfg)["train"]
    assert tr.texts == ("hello, world", "plain") and tr.label_names == ("0", "1")
    with_header = _write(tmp_path / "h.csv", 'sentence,y\n"hello, world",1\nplain,0\n')
    cfg = _files_cfg("csv", {"train": with_header, "dev": with_header}, text_field="sentence", label_field="y")
    assert load_splits(cfg)["train"].texts == ("hello, world", "plain")
    cfg.source = "jsonl"
    cfg.columns = ("sentence", "y")
    with pytest.raises(ConfigError, match="applies to csv / tsv"):
        load_splits(cfg)


def test_parquet_text_source(tmp_path):
    train = _write_parquet(tmp_path / "train.parquet",
                           {"text": ["first", "second", "third"], "label": ["pos", "neg", "pos"],
                            "other": [1.0, 2.0, 3.0]})
    dev = _write_parquet(tmp_path / "dev.parquet", {"text": ["x"], "label": ["neg"]})
    splits = load_splits(_files_cfg("parquet", {"train": train, "dev": dev}, label_names=("neg", "pos")))
    assert splits["train"].texts == ("first", "second", "third")
    np.testing.assert_array_equal(splits["train"].labels, [1, 0, 1])
    assert splits["eval"].texts == ("x",) and splits["train"].token_ids is None
    bad = _write_parquet(tmp_path / "bad.parquet", {"sentence": ["a"], "label": [0]})
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\]; available columns: \['sentence', "
                                        r"'label'\]"):
        load_splits(_files_cfg("parquet", {"train": bad, "dev": bad}))
    junk = _write(tmp_path / "junk.parquet", "not parquet at all\n")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_splits(_files_cfg("parquet", {"train": junk, "dev": junk}))


def test_files_source_picks_reader_by_extension(tmp_path):
    train = _write(tmp_path / "train.csv", "text,label\ngood,1\nbad,0\n")
    dev_jsonl = _write(tmp_path / "dev.jsonl", json.dumps({"text": "ok", "label": 1}) + "\n")
    dev_parquet = _write_parquet(tmp_path / "dev.parquet", {"text": ["meh", "great"], "label": [0, 1]})
    dev_tsv = _write(tmp_path / "dev.tsv", 'text\tlabel\nsay "hi"\t0\n')
    for dev, texts in ((dev_jsonl, ("ok",)), (dev_parquet, ("meh", "great")), (dev_tsv, ('say "hi"',))):
        splits = load_splits(_files_cfg("files", {"train": train, "eval": dev}))  # eval by role
        assert splits["train"].texts == ("good", "bad") and splits["eval"].texts == texts
        assert splits["eval"].name == "toy:dev"
    odd = _write(tmp_path / "dev.txt", "text,label\nx,0\n")
    with pytest.raises(ConfigError, match=r"dev.txt: cannot tell the file format from the extension '.txt'"):
        load_splits(_files_cfg("files", {"train": train, "eval": odd}))
    with pytest.raises(ConfigError, match="both name the eval split"):
        load_splits(_files_cfg("files", {"train": train, "eval": dev_tsv, "dev": dev_jsonl}))


# ----------------------------------------------------------------------------- pre-tokenised rows


def _tokenizer(n_words=20, max_length=8):
    return WordTokenizer(list(WordTokenizer.SPECIALS) + [f"w{i}" for i in range(n_words)],
                         max_length=max_length)


def _check_pretokenized(splits, max_length=6):
    tr = splits["train"]
    assert tr.token_ids is not None and tr.texts == ("", "", "")
    assert [t.tolist() for t in tr.token_ids] == [[2, 5, 6, 3], [2, 7, 3], [2, 4, 5, 6, 7, 8, 9, 3]]
    enc = encode_dataset(tr, _tokenizer(), max_length=max_length)
    np.testing.assert_array_equal(enc.input_ids, [[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0],
                                                  [2, 4, 5, 6, 7, 8]])
    np.testing.assert_array_equal(enc.attention_mask.sum(1), [4, 3, 6])
    assert enc.num_truncated == 1 and enc.source_fingerprint == tr.fingerprint()
    np.testing.assert_array_equal(enc.labels, [1, 0, 1])
    return tr, enc


def test_pretokenized_jsonl_csv_and_parquet(tmp_path, caplog):
    rows = [([2, 5, 6, 3], 1), ([2, 7, 3], 0), ([2, 4, 5, 6, 7, 8, 9, 3], 1)]
    jsonl = _write(tmp_path / "train.jsonl", "".join(json.dumps({"input_ids": ids, "label": y}) + "\n"
                                                     for ids, y in rows))
    with caplog.at_level(logging.WARNING):
        tr, _ = _check_pretokenized(load_splits(_files_cfg("jsonl", {"train": jsonl, "dev": jsonl})))
    assert "truncated 1 of 3 inputs to max_length=6" in caplog.text
    spaces = _write(tmp_path / "spaces.csv", "input_ids,label\n" + "".join(
        f"{' '.join(map(str, ids))},{y}\n" for ids, y in rows))
    commas = _write(tmp_path / "commas.csv", "input_ids,label\n" + "".join(
        f'"[{", ".join(map(str, ids))}]",{y}\n' for ids, y in rows))
    for csv_file in (spaces, commas):
        again, _ = _check_pretokenized(load_splits(_files_cfg("csv", {"train": csv_file, "dev": csv_file})))
        assert again.fingerprint() == tr.fingerprint()
    parquet = _write_parquet(tmp_path / "train.parquet",
                             {"input_ids": [ids for ids, _ in rows], "label": [y for _, y in rows],
                              "text": ["a b", "c", "d e f g h i"]})
    pq_tr = load_splits(_files_cfg("parquet", {"train": parquet, "dev": parquet}))["train"]
    assert pq_tr.texts == ("a b", "c", "d e f g h i")  # kept for display; the ids are what is encoded
    assert [t.tolist() for t in pq_tr.token_ids] == [r[0] for r in rows]
    assert pq_tr.fingerprint() != tr.fingerprint()
    sub = pq_tr.subset([2, 0])
    assert [t.tolist() for t in sub.token_ids] == [rows[2][0], rows[0][0]]
    assert sub.texts == ("d e f g h i", "a b")


def test_pretokenized_masks_types_and_fingerprint(tmp_path):
    rows = [{"input_ids": [2, 5, 3, 6, 3], "attention_mask": [1, 1, 1, 1, 1], "token_type_ids": [0, 0, 0, 1, 1],
             "label": 0},
            {"input_ids": [2, 7, 3, 0, 0], "attention_mask": [1, 1, 1, 0, 0], "token_type_ids": [0, 0, 0, 0, 0],
             "label": 1}]
    path = _write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    tr = load_splits(_files_cfg("jsonl", {"train": path, "dev": path}))["train"]
    assert tr.token_masks is not None and tr.token_types is not None
    enc = encode_dataset(tr, _tokenizer(), max_length=6)
    np.testing.assert_array_equal(enc.input_ids, [[2, 5, 3, 6, 3, 0], [2, 7, 3, 0, 0, 0]])
    np.testing.assert_array_equal(enc.attention_mask, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(enc.token_type_ids, [[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]])
    # fingerprint covers ids, masks and types
    import dataclasses
    changed = [dataclasses.replace(tr, token_ids=(tr.token_ids[0], np.array([2, 8, 3, 0, 0]))),
               dataclasses.replace(tr, token_masks=None),
               dataclasses.replace(tr, token_types=(tr.token_types[0], np.array([0, 0, 1, 0, 0])))]
    assert len({tr.fingerprint()} | {c.fingerprint() for c in changed}) == 4
    rows[0]["text"] = "shown"  # text is optional in a pre-tokenised file: display only
    _write(path, "".join(json.dumps(r) + "\n" for r in rows))
    assert load_splits(_files_cfg("jsonl", {"train": path, "dev": path}))["train"].texts == ("shown", "")
    rows[1]["attention_mask"] = [1, 1]
    _write(path, "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="row 1 has 2 attention_mask values for 5 input_ids"):
        load_splits(_files_cfg("jsonl", {"train": path, "dev": path}))
    rows[1]["attention_mask"] = [0, 1, 1, 1, 1]  # left padding
    _write(path, "".join(json.dumps(r) + "\n" for r in rows))
    tr = load_splits(_files_cfg("jsonl", {"train": path, "dev": path}))["train"]
    with pytest.raises(DataError, match="example id 1 has attention_mask .* not 1s followed by 0s"):
        encode_dataset(tr, _tokenizer(), max_length=6)


def test_pretokenized_bad_ids_are_refused(tmp_path):
    path = _write(tmp_path / "train.csv", "input_ids,label\n2 5 3,0\n2 x 3,1\n")
    cfg = _files_cfg("csv", {"train": path, "dev": path})
    with pytest.raises(DataError, match=r"train.csv: row 1 field 'input_ids' holds 'x', not an integer"):
        load_splits(cfg)
    _write(path, "input_ids,label\n2 5 3,0\n2 -4 3,1\n")
    with pytest.raises(DataError, match=r"row 1 field 'input_ids' holds -4 < 0"):
        load_splits(cfg)
    _write(path, "input_ids,label\n2 5 3,0\n2 99 3,1\n")
    tr = load_splits(cfg)["train"]
    with pytest.raises(DataError, match=r"toy:train: example id 1 has token id 99 outside .* \[0, 24\)"):
        encode_dataset(tr, _tokenizer())
    ds = TextDataset(("", ""), None, np.array([0, 1]), np.array([0, 1]), ("a", "b"),
                     token_ids=(np.array([2, 3]), np.array([2, -1, 3])))  # built in code, not read
    with pytest.raises(DataError, match=r"example id 1 has token id -1 outside"):
        encode_dataset(ds, _tokenizer())
    with pytest.raises(ValueError, match=r"token_masks\[0\] has 3 entries but token_ids\[0\] has 2"):
        TextDataset(("",), None, np.array([0]), np.array([0]), ("a",), token_ids=(np.array([2, 3]),),
                    token_masks=(np.array([1, 1, 1]),))


def test_mixed_text_and_id_rows_are_refused(tmp_path):
    path = _write(tmp_path / "train.jsonl", json.dumps({"input_ids": [2, 5, 3], "label": 0}) + "\n"
                  + json.dumps({"text": "plain words", "label": 1}) + "\n")
    cfg = _files_cfg("jsonl", {"train": path, "dev": path})
    with pytest.raises(DataError, match=r"row 1 \(line 2\) has no input_ids but row 0 has input_ids; "
                                        r"a file holds text in every row or input_ids in every row"):
        load_splits(cfg)
    _write(path, json.dumps({"text": "plain", "label": 0}) + "\n"
           + json.dumps({"text": "x", "input_ids": [2, 3], "label": 1}) + "\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\) has input_ids but row 0 has no input_ids"):
        load_splits(cfg)
    csv_path = _write(tmp_path / "train.csv", "text,input_ids,label\na,2 5 3,0\nb,,1\n")
    with pytest.raises(DataError, match=r"train.csv: row 1 has no input_ids but has text, while row 0 has"):
        load_splits(_files_cfg("csv", {"train": csv_path, "dev": csv_path}))
    text_dev = _write(tmp_path / "dev.csv", "text,label\na,0\n")
    ids_train = _write(tmp_path / "ids.csv", "input_ids,label\n2 5 3,0\n")
    with pytest.raises(DataError, match=r"ids.csv \(train\) holds token ids .*dev.csv \(eval\) holds text"):
        load_splits(_files_cfg("csv", {"train": ids_train, "dev": text_dev}))


# ----------------------------------------------------------------------------- strict labels


def test_stray_label_in_a_binary_task_is_refused(tmp_path, caplog):
    train = _write(tmp_path / "train.csv", "text,label\na,0\nb,1\nc,7\nd,1\n")
    dev = _write(tmp_path / "dev.csv", "text,label\ne,0\nf,1\n")
    cfg = _files_cfg("csv", {"train": train, "dev": dev}, label_names=("negative", "positive"))
    with pytest.raises(DataError, match=r"train.csv: row 2 has unknown label '7' in field 'label'; known "
                                        r"label_names: \('negative', 'positive'\) \(class indices 0..1\); "
                                        r"set data.label_names, or fix the label"):
        load_splits(cfg)
    cfg.label_names = None
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    assert str(err.value) == (f"{train}: labels [0, 1, 7] leave classes 2..6 without examples (row 2 has "
                              "label 7); set data.label_names, or fix the label")
    _write(dev, "text,label\ne,0\nf,3\n")  # the stray may sit in the eval file
    _write(train, "text,label\na,0\nb,1\nc,2\n")  # with the eval file: 0..3 all present
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tracin_jax.data.sources"):
        assert load_splits(cfg)["train"].label_names == ("0", "1", "2", "3")
    assert ("inferred label_names ('0', '1', '2', '3') from field 'label'; set data.label_names to fix "
            "their order") in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    _write(dev, "text,label\ne,0\nf,5\n")
    with pytest.raises(DataError, match=r"dev.csv: labels \[0, 1, 2, 5\] leave classes 3..4 without "
                                        r"examples \(row 1 has label 5\)"):
        load_splits(cfg)
    _write(dev, "text,label\ne,-1\n")
    with pytest.raises(DataError, match=r"dev.csv: row 0 has label -1 < 0"):
        load_splits(cfg)


def test_jsonl_integer_labels_out_of_range(tmp_path):
    path = _write(tmp_path / "train.jsonl", "".join(json.dumps({"text": t, "label": y}) + "\n"
                                                    for t, y in (("a", 0), ("b", 1), ("c", 2))))
    cfg = _files_cfg("jsonl", {"train": path, "dev": path}, label_names=("neg", "pos"))
    with pytest.raises(DataError, match=r"train.jsonl: row 2 has unknown label 2"):
        load_splits(cfg)
    cfg.label_names = None
    with pytest.raises(DataError, match=r"labels \[0, 2\] leave class 1 without examples \(row 1 has label 2\)"):
        _write(path, "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in (("a", 0), ("c", 2))))
        load_splits(cfg)


# ----------------------------------------------------------------------------- nothing to read, encodings


def test_nothing_to_read_is_an_error(tmp_path):
    header_only = _write(tmp_path / "train.csv", "text,label\n")
    dev = _write(tmp_path / "dev.csv", "text,label\nx,0\n")
    with pytest.raises(DataError, match=r"train.csv: split 'train' has no rows to read \(the file holds "
                                        r"only a header\)"):
        load_splits(_files_cfg("csv", {"train": header_only, "dev": dev}))
    empty = _write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match=r"empty.csv: split 'dev' has no rows to read \(the file is empty\)"):
        load_splits(_files_cfg("csv", {"train": dev, "dev": empty}))
    blank = _write(tmp_path / "blank.jsonl", "\n\n")
    with pytest.raises(DataError, match=r"blank.jsonl: split 'train' has no rows to read"):
        load_splits(_files_cfg("jsonl", {"train": blank, "dev": blank}))
    with pytest.raises(DataError, match=r"dev.csv: split 'dev' has no rows left after subsampling "
                                        r"\(data.max_eval=0\)"):
        load_splits(_files_cfg("csv", {"train": dev, "dev": dev}, max_eval=0))
    blank_text = _write(tmp_path / "blank_text.csv", "text,label\n ,0\n,1\n")
    with pytest.raises(DataError, match=r"blank_text.csv: split 'train' has no rows left: all 2 selected rows "
                                        r"have empty text"):
        load_splits(_files_cfg("csv", {"train": blank_text, "dev": dev}, drop_empty=True,
                               label_names=("a", "b")))
    cfg = default_data_config()
    cfg.max_train = 0
    with pytest.raises(DataError, match="synthetic: split 'train' has no rows"):
        load_splits(cfg)


def test_decode_errors_name_row_and_offset_then_read_with_encoding(tmp_path):
    data = b"text,label\none,0\ntwo,1\nthree,0\ncaf\xe9,1\n"
    assert data.index(b"\xe9") == 34
    train = tmp_path / "train.csv"
    train.write_bytes(data)
    cfg = _files_cfg("csv", {"train": train, "dev": train})
    with pytest.raises(DataError) as err:
        load_splits(cfg)
    assert str(err.value) == (f"{train}: row 3 (byte offset 34) is not valid utf-8; set data.encoding "
                              "(e.g. --config.data.encoding=latin-1) or fix the file")
    cfg.encoding = "latin-1"
    assert load_splits(cfg)["train"].texts == ("one", "two", "three", "café")
    # a quoted multi-line field counts as one row
    train.write_bytes(b'text,label\n"two\nlines",0\n\nok,1\nna\xefve,0\n')
    cfg.encoding = "utf-8"
    with pytest.raises(DataError, match=r"row 2 \(byte offset 33\) is not valid utf-8"):
        load_splits(cfg)
    train.write_bytes(b"t\xe9xt,label\na,0\n")
    with pytest.raises(DataError, match=r"the header row \(byte offset 1\) is not valid utf-8"):
        load_splits(cfg)
    headerless = tmp_path / "plain.tsv"
    headerless.write_bytes(b"a\t0\nb\xff\t1\n")
    with pytest.raises(DataError, match=r"row 1 \(byte offset 5\) is not valid utf-8"):
        load_splits(_files_cfg("tsv", {"train": headerless, "dev": headerless}, columns=("text", "label")))
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_bytes(b'{"text": "a", "label": 0}\n\n{"text": "\xe9", "label": 1}\n')
    with pytest.raises(DataError, match=r"row 1 \(line 3\) \(byte offset 37\) is not valid utf-8"):
        load_splits(_files_cfg("jsonl", {"train": jsonl, "dev": jsonl}))
    assert load_splits(_files_cfg("jsonl", {"train": jsonl, "dev": jsonl}, encoding="latin-1"))[
        "train"].texts == ("a", "é")
    with pytest.raises(ConfigError, match="data.encoding='klingon' is not a known text encoding"):
        load_splits(_files_cfg("jsonl", {"train": jsonl, "dev": jsonl}, encoding="klingon"))
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext,label\nx,0\n".encode("utf-8"))
    assert load_splits(_files_cfg("csv", {"train": bom, "dev": bom}))["train"].texts == ("x",)


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


def test_tfds_glue_sst2_under_mock_data():
    """configs/sst2_*.py's default data: TFDS glue/sst2, field sentence, eval split validation."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow")
    import tensorflow_datasets.text.glue  # noqa: F401

    from tracin_jax.config import load_config
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "sst2_bert_word.py").data
    cfg.max_train = 6
    with tfds.testing.mock_data(num_examples=10):
        reference = {split: list(tfds.as_numpy(tfds.load("glue/sst2", split=split, shuffle_files=False)))
                     for split in ("train", "validation")}
        splits = load_splits(cfg)
    tr, ev = splits["train"], splits["eval"]
    assert len(tr) == 6 and len(ev) == 10
    assert tr.label_names == ev.label_names == ("negative", "positive")
    assert tr.name == "glue/sst2:train" and ev.name == "glue/sst2:validation"
    for split, ds in (("train", tr), ("validation", ev)):
        rows = [reference[split][i] for i in ds.ids]
        assert list(ds.texts) == [r["sentence"].decode() for r in rows]
        np.testing.assert_array_equal(ds.labels, [r["label"] for r in rows])
