"""Tokenizers and encoded datasets: parity with transformers' tokenizers, truncation, round trips."""
import json
import logging

import ml_collections
import numpy as np
import pytest
import transformers

from tracin_jax.data import (
    EncodedDataset,
    TextDataset,
    WordTokenizer,
    default_tokenizer_config,
    encode_dataset,
    load_tokenizer,
)

WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
                   "dog", "##s", "run", "##ning", ".", ",", "a", "big", "red", "ball", "is", "play",
                   "##ing", "with", "and", "un", "##happy", "happy", "!", "?"]
SENTENCES = ["The cat sat on the mat.", "Dogs running!", "A big red ball, and a dog playing.",
             "Is the cat unhappy?", "zebra"]
PAIRS = ["the dog is happy", "a cat", "cats running with a red ball and a big dog", "no", "!"]


def _cfg(**kw):
    cfg = default_tokenizer_config()
    for k, v in kw.items():
        cfg[k] = v
    return cfg


@pytest.fixture()
def bert_dir(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(WORDPIECE_VOCAB) + "\n")
    return d


@pytest.fixture()
def roberta_dir(tmp_path):
    import tokenizers

    bpe = tokenizers.ByteLevelBPETokenizer()
    corpus = ["the cat sat on the mat", "dogs are running on the grass", "A big red ball!",
              "Is the cat unhappy? No, the cat is happy."] * 10
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    d = tmp_path / "roberta"
    d.mkdir()
    bpe.save_model(str(d))
    return d


def _unpadded(enc, i):
    n = int(enc.attention_mask[i].sum())
    return enc.input_ids[i, :n].tolist(), enc.token_type_ids[i, :n].tolist()


def test_bert_wordpiece_matches_reference_python_tokenizer(bert_dir):
    tok = load_tokenizer(_cfg(kind="bert", path=str(bert_dir), max_length=32))
    ref = transformers.BertTokenizerLegacy(vocab_file=str(bert_dir / "vocab.txt"), do_lower_case=True)
    assert tok.vocab_size == len(WORDPIECE_VOCAB) == len(ref.vocab)
    enc = tok.encode(SENTENCES, PAIRS)
    for i, (a, b) in enumerate(zip(SENTENCES, PAIRS)):
        expected = ref(a, b, return_token_type_ids=True)
        ids, types = _unpadded(enc, i)
        assert ids == expected["input_ids"]
        assert types == expected["token_type_ids"]
    single = tok.encode(SENTENCES)
    for i, a in enumerate(SENTENCES):
        assert _unpadded(single, i)[0] == ref(a)["input_ids"]


def test_bert_real_words_are_not_unk(bert_dir):
    """The transformers 5 trap: a vocab_file that is silently ignored gives a 5-token vocab."""
    tok = load_tokenizer(_cfg(kind="bert", path=str(bert_dir)))
    ids, _ = _unpadded(tok.encode(["the cat sat on the mat"]), 0)
    assert tok.unk_id not in ids
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]
    assert tok.convert_ids_to_tokens(tok.encode(["zebra"]).input_ids[0, :3]) == ["[CLS]", "[UNK]", "[SEP]"]
    assert tok.pad_id == 0 and tok.special_ids == (2, 3)


def test_bert_pair_layout_and_padding(bert_dir):
    tok = load_tokenizer(_cfg(kind="bert", path=str(bert_dir), max_length=16))
    enc = tok.encode(["the cat"], ["a dog"])
    assert enc.input_ids.shape == enc.attention_mask.shape == enc.token_type_ids.shape == (1, 16)
    assert all(a.dtype == np.int32 for a in (enc.input_ids, enc.attention_mask, enc.token_type_ids))
    assert tok.convert_ids_to_tokens(enc.input_ids[0, :7]) == ["[CLS]", "the", "cat", "[SEP]", "a", "dog",
                                                               "[SEP]"]
    np.testing.assert_array_equal(enc.token_type_ids[0], [0, 0, 0, 0, 1, 1, 1] + [0] * 9)
    np.testing.assert_array_equal(enc.attention_mask[0], [1] * 7 + [0] * 9)
    np.testing.assert_array_equal(enc.input_ids[0, 7:], tok.pad_id)
    assert enc.num_truncated == 0


def test_bert_truncation_is_counted_logged_and_matches_transformers(bert_dir, caplog):
    """Longest-first pair truncation as transformers' (fast) BertTokenizer does it."""
    tok = load_tokenizer(_cfg(kind="bert", path=str(bert_dir), max_length=8))
    ref = transformers.BertTokenizer(vocab=str(bert_dir / "vocab.txt"), do_lower_case=True)
    assert ref.vocab_size == len(WORDPIECE_VOCAB)
    with caplog.at_level(logging.WARNING):
        enc = tok.encode(SENTENCES, PAIRS)
    untruncated = [len(ref(a, b)["input_ids"]) for a, b in zip(SENTENCES, PAIRS)]
    assert enc.num_truncated == sum(n > 8 for n in untruncated) >= 2
    assert f"truncated {enc.num_truncated} of 5" in caplog.text
    for i, (a, b) in enumerate(zip(SENTENCES, PAIRS)):
        expected = ref(a, b, truncation="longest_first", max_length=8)["input_ids"]
        assert _unpadded(enc, i)[0] == expected
        assert len(expected) <= 8
        assert tok.convert_ids_to_tokens([_unpadded(enc, i)[0][-1]]) == ["[SEP]"]


def test_bert_lowercase_option(bert_dir):
    cased = load_tokenizer(_cfg(kind="bert", path=str(bert_dir), lowercase=False))
    ids, _ = _unpadded(cased.encode(["The cat"]), 0)
    assert cased.convert_ids_to_tokens(ids) == ["[CLS]", "[UNK]", "cat", "[SEP]"]


def test_bert_save_and_reload_from_tokenizer_json(bert_dir, tmp_path):
    tok = load_tokenizer(_cfg(kind="bert", path=str(bert_dir), max_length=24))
    out = tmp_path / "saved"
    tok.save(out)
    assert (out / "vocab.txt").read_text().split() == WORDPIECE_VOCAB
    json_only = tmp_path / "json_only"
    json_only.mkdir()
    (json_only / "tokenizer.json").write_text((out / "tokenizer.json").read_text())
    for path in (out, json_only, json_only / "tokenizer.json", out / "vocab.txt"):
        again = load_tokenizer(_cfg(kind="bert", path=str(path), max_length=24))
        a, b = tok.encode(SENTENCES, PAIRS), again.encode(SENTENCES, PAIRS)
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.token_type_ids, b.token_type_ids)


def test_roberta_bpe_matches_transformers(roberta_dir):
    tok = load_tokenizer(_cfg(kind="roberta", path=str(roberta_dir), max_length=128))
    ref = transformers.RobertaTokenizer(vocab=str(roberta_dir / "vocab.json"),
                                        merges=str(roberta_dir / "merges.txt"))
    assert tok.pad_id == ref.pad_token_id == 1
    assert tok.special_ids == (ref.cls_token_id, ref.sep_token_id) == (0, 2)
    enc = tok.encode(SENTENCES, PAIRS)
    for i, (a, b) in enumerate(zip(SENTENCES, PAIRS)):
        ids, types = _unpadded(enc, i)
        assert ids == ref(a, b)["input_ids"]
        assert types == [0] * len(ids)  # RoBERTa has one token type
    texts = SENTENCES + ["the <mask> sat</s>"]  # special tokens in text are kept whole
    single = tok.encode(texts)
    for i, a in enumerate(texts):
        assert _unpadded(single, i)[0] == ref(a)["input_ids"]
    assert tok.token_to_id("<mask>") in _unpadded(single, len(texts) - 1)[0]
    # <s> a </s></s> b </s>, cased (RoBERTa never lowercases)
    tokens = tok.convert_ids_to_tokens(_unpadded(tok.encode(["the cat"], ["A big"]), 0)[0])
    assert tokens[0] == "<s>" and tokens[-1] == "</s>" and tokens.count("</s>") == 3
    i = tokens.index("</s>")
    assert tokens[i + 1] == "</s>" and "".join(tokens[1:i]) == "theĠcat" and "A" in tokens[i + 2]


def test_roberta_truncation_and_save_round_trip(roberta_dir, tmp_path):
    tok = load_tokenizer(_cfg(kind="roberta", path=str(roberta_dir), max_length=10))
    ref = transformers.RobertaTokenizer(vocab=str(roberta_dir / "vocab.json"),
                                        merges=str(roberta_dir / "merges.txt"))
    enc = tok.encode(SENTENCES, PAIRS)
    full = [len(ref(a, b)["input_ids"]) for a, b in zip(SENTENCES, PAIRS)]
    assert enc.num_truncated == sum(n > 10 for n in full) > 0
    for i, (a, b) in enumerate(zip(SENTENCES, PAIRS)):
        assert _unpadded(enc, i)[0] == ref(a, b, truncation="longest_first", max_length=10)["input_ids"]
    tok.save(tmp_path / "saved")
    again = load_tokenizer(_cfg(kind="roberta", path=str(tmp_path / "saved"), max_length=10))
    np.testing.assert_array_equal(again.encode(SENTENCES, PAIRS).input_ids, enc.input_ids)


def test_word_tokenizer_build_order_and_limits():
    texts = ["b a a", "c a b", "d"]
    tok = WordTokenizer.build(texts, max_size=100, min_freq=1)
    assert tok.vocab == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d"]  # count, then name
    assert WordTokenizer.build(texts, max_size=100, min_freq=2).vocab[4:] == ["a", "b"]
    assert WordTokenizer.build(texts, max_size=6).vocab[4:] == ["a", "b"]
    assert tok.pad_id == 0 and tok.unk_id == 1 and tok.special_ids == (2, 3)
    with pytest.raises(ValueError, match="max_size"):
        WordTokenizer.build(texts, max_size=4)


def test_word_tokenizer_encode_layout_lowercase_punctuation():
    tok = WordTokenizer.build(["The cat, the DOG.", "a b c d e f"], max_size=50)
    enc = tok.encode(["the Cat, zebra [CLS]"], ["dog."], max_length=16)
    tokens = tok.convert_ids_to_tokens(_unpadded(enc, 0)[0])
    assert tokens == ["[CLS]", "the", "cat", ",", "[UNK]", "[UNK]", "[UNK]", "[UNK]", "[SEP]", "dog", ".",
                      "[SEP]"]  # "[CLS]" in text is "[", "cls", "]", never the special token
    np.testing.assert_array_equal(enc.token_type_ids[0, :12], [0] * 9 + [1] * 3)
    np.testing.assert_array_equal(enc.attention_mask[0], [1] * 12 + [0] * 4)
    cased = WordTokenizer.build(["The the"], max_size=50, lowercase=False)
    assert cased.vocab[4:] == ["The", "the"]


def test_word_tokenizer_truncation_longest_first(caplog):
    tok = WordTokenizer.build(["a b c d e f g h"], max_size=50)
    with caplog.at_level(logging.WARNING):
        enc = tok.encode(["a b c d e f", "a"], ["g h", "b"], max_length=7)
    assert enc.num_truncated == 1 and "truncated 1 of 2" in caplog.text
    assert tok.convert_ids_to_tokens(enc.input_ids[0]) == ["[CLS]", "a", "b", "[SEP]", "g", "h", "[SEP]"]
    with pytest.raises(ValueError, match="max_length"):
        tok.encode(["a"], max_length=2)


def test_word_tokenizer_save_load_and_load_tokenizer(tmp_path):
    corpus = ["alpha beta beta", "gamma Beta"]
    tok = load_tokenizer(_cfg(kind="word", vocab_size=50, lowercase=False), corpus=corpus)
    tok.save(tmp_path / "w")
    assert (tmp_path / "w" / "vocab.txt").read_text().splitlines() == tok.vocab
    again = load_tokenizer(ml_collections.ConfigDict(dict(kind="word", path=str(tmp_path / "w"))))
    assert again.vocab == tok.vocab and again.lowercase is False  # from tokenizer_config.json
    np.testing.assert_array_equal(again.encode(corpus).input_ids, tok.encode(corpus).input_ids)
    with pytest.raises(ValueError, match="corpus"):
        load_tokenizer(_cfg(kind="word"))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.convert_ids_to_tokens([tok.vocab_size])


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        load_tokenizer(_cfg(kind="gpt2"))
    with pytest.raises(FileNotFoundError, match="tokenizer.path"):
        load_tokenizer(_cfg(kind="bert", path=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_tokenizer(_cfg(kind="bert", path=str(tmp_path)))
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="special token"):
        load_tokenizer(_cfg(kind="bert", path=str(tmp_path)))


def test_encode_dataset_and_save_load_round_trip(bert_dir, tmp_path):
    ds = TextDataset(texts=tuple(SENTENCES), text_pairs=tuple(PAIRS),
                     labels=np.array([0, 1, 2, 1, 0]), ids=np.array([10, 3, 7, 42, 5]),
                     label_names=("e", "n", "c"), name="toy:train")
    tok = load_tokenizer(_cfg(kind="bert", path=str(bert_dir)))
    enc = encode_dataset(ds, tok, max_length=12)
    assert len(enc) == 5 and enc.max_length == 12
    assert enc.input_ids.dtype == np.int32 and enc.ids.dtype == np.int64 and enc.labels.dtype == np.int32
    np.testing.assert_array_equal(enc.labels, ds.labels)
    np.testing.assert_array_equal(enc.ids, ds.ids)
    np.testing.assert_array_equal(enc.input_ids, tok.encode(SENTENCES, PAIRS, max_length=12).input_ids)
    assert enc.token_type_ids.max() == 1  # pairs were encoded as pairs
    assert enc.source_fingerprint == ds.fingerprint() and enc.num_truncated > 0

    enc.save(tmp_path / "enc")
    meta = json.loads((tmp_path / "enc" / "meta.json").read_text())
    assert meta["label_names"] == ["e", "n", "c"] and meta["num_examples"] == 5
    back = EncodedDataset.load(tmp_path / "enc")
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels", "ids"):
        np.testing.assert_array_equal(getattr(back, key), getattr(enc, key))
        assert getattr(back, key).dtype == getattr(enc, key).dtype
    assert (back.pad_id, back.label_names, back.name, back.num_truncated, back.source_fingerprint) == (
        enc.pad_id, enc.label_names, enc.name, enc.num_truncated, enc.source_fingerprint)

    sub = enc.subset([4, 0])
    np.testing.assert_array_equal(sub.ids, [5, 10])
    np.testing.assert_array_equal(sub.input_ids, enc.input_ids[[4, 0]])
    with pytest.raises(ValueError, match="labels shape"):
        EncodedDataset(enc.input_ids, enc.attention_mask, enc.token_type_ids, enc.labels[:3], enc.ids)
