"""Tokenizers (BERT WordPiece, RoBERTa byte-level BPE, a word-level vocabulary) and encoding.

Every tokenizer has the same small interface: `kind`, `vocab_size`, `pad_id`,
`special_ids` (start / end / pair-separator ids, never pad), `max_length`,
`encode(texts, pairs=None, max_length=None) -> Encoded`, `convert_ids_to_tokens(ids)`,
`token_to_id(token)` and `save(dir)`.

Layouts (L = max_length, every row padded to L with `pad_id`, attention mask 0):
- bert / word: `[CLS] a [SEP]`, pairs `[CLS] a [SEP] b [SEP]`, token_type_ids 0 for
  `[CLS] a [SEP]` and 1 for `b [SEP]`.
- roberta: `<s> a </s>`, pairs `<s> a </s></s> b </s>`, token_type_ids all 0
  (RoBERTa has a single token type).
Over-long inputs are truncated longest-first to L tokens including the special
tokens; the count is logged and returned as `Encoded.num_truncated` (docs/method.md
"Paper settings": max sequence length 128).

`encode_dataset` packs a pre-tokenised `TextDataset` (`token_ids` set) as given
instead of tokenizing: padded with `pad_id`, cut to L (counted and logged likewise).

`EncodedDataset` holds an encoded `TextDataset` as int arrays and round-trips
through a directory of `.npy` files plus `meta.json`.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from tracin_jax.data.dataset import TextDataset
from tracin_jax.errors import DataError

log = logging.getLogger(__name__)

KINDS = ("bert", "roberta", "word", "ids")
DEFAULT_MAX_LENGTH = 128  # docs/method.md "Paper settings": max sequence length 128


def default_tokenizer_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        kind="word",  # one of KINDS
        path=placeholder(str),  # HF tokenizer dir/file (bert, roberta) or saved word vocab dir
        lowercase=True,  # bert from vocab.txt and word; RoBERTa's byte-level BPE is always cased
        max_length=DEFAULT_MAX_LENGTH,
        vocab_size=5000,  # word: maximum vocabulary size, special tokens included
        min_freq=1,  # word: minimum training-corpus count of a kept word
    ))


@dataclasses.dataclass(frozen=True, eq=False)
class Encoded:
    """Token ids of N texts (or text pairs), each `[N, L] int32`."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    num_truncated: int  # inputs longer than L, cut to L


def _check_pairs(texts: Sequence[str], pairs: Sequence[str] | None) -> None:
    if isinstance(texts, str) or (pairs is not None and isinstance(pairs, str)):
        raise ValueError("encode takes a sequence of texts, not a single string")
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")


def _log_truncation(num_truncated: int, n: int, max_length: int) -> None:
    if num_truncated:
        log.warning("truncated %d of %d inputs to max_length=%d tokens", num_truncated, n, max_length)


def _pack(rows: list[tuple[list[int], list[int]]], max_length: int, pad_id: int,
          num_truncated: int) -> Encoded:
    """Pads `(ids, type_ids)` rows to `[N, max_length]` int32 arrays."""
    n = len(rows)
    input_ids = np.full((n, max_length), pad_id, np.int32)
    attention_mask = np.zeros((n, max_length), np.int32)
    token_type_ids = np.zeros((n, max_length), np.int32)
    for i, (ids, types) in enumerate(rows):
        input_ids[i, :len(ids)] = ids
        attention_mask[i, :len(ids)] = 1
        token_type_ids[i, :len(types)] = types
    return Encoded(input_ids, attention_mask, token_type_ids, int(num_truncated))


# ----------------------------------------------------------------------------- word level


class WordTokenizer:
    """Word-level vocabulary for the synthetic data and the CNN.

    Words are `\\w+` runs and single punctuation marks (after optional lowercasing);
    ids: `[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3`, then words by descending training
    count (ties alphabetical). Unknown words map to `[UNK]`. Special tokens never
    arise from text ("[CLS]" splits into "[", "CLS", "]").
    """

    kind = "word"
    PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
    SPECIALS = (PAD, UNK, CLS, SEP)
    _WORD_RE = re.compile(r"\w+|[^\w\s]")

    def __init__(self, vocab: Sequence[str], lowercase: bool = True,
                 max_length: int = DEFAULT_MAX_LENGTH):
        vocab = list(vocab)
        if vocab[:4] != list(self.SPECIALS):
            raise ValueError(f"word vocabulary must start with {self.SPECIALS}, got {vocab[:4]}")
        if len(set(vocab)) != len(vocab):
            dup = [w for w, c in collections.Counter(vocab).items() if c > 1]
            raise ValueError(f"word vocabulary has duplicate tokens {dup[:10]}")
        self.vocab = vocab
        self.lowercase = bool(lowercase)
        self.max_length = int(max_length)
        self._index = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = 0, 1, 2, 3

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int, min_freq: int = 1, lowercase: bool = True,
              max_length: int = DEFAULT_MAX_LENGTH) -> WordTokenizer:
        """Vocabulary of at most `max_size` tokens (specials included) with count >= `min_freq`."""
        if max_size < len(cls.SPECIALS) + 1:
            raise ValueError(f"max_size={max_size} leaves no room for words after {cls.SPECIALS}")
        counts = collections.Counter()
        for text in texts:
            counts.update(cls._split(text, lowercase))
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        room = max_size - len(cls.SPECIALS)
        if len(kept) > room:
            log.info("word vocabulary: kept %d of %d words (max_size=%d)", room, len(kept), max_size)
        return cls(list(cls.SPECIALS) + kept[:room], lowercase=lowercase, max_length=max_length)

    @classmethod
    def load(cls, directory: str | Path, lowercase: bool | None = None,
             max_length: int = DEFAULT_MAX_LENGTH) -> WordTokenizer:
        """Reads `vocab.txt` (one token per line) and, if present, `tokenizer_config.json`."""
        directory = Path(directory)
        vocab_file = directory / "vocab.txt" if directory.is_dir() else directory
        if not vocab_file.is_file():
            raise FileNotFoundError(f"no word vocabulary at {vocab_file}")
        config_file = vocab_file.parent / "tokenizer_config.json"
        if lowercase is None:
            lowercase = (json.loads(config_file.read_text()).get("lowercase", True)
                         if config_file.is_file() else True)
        vocab = vocab_file.read_text(encoding="utf-8").splitlines()
        return cls(vocab, lowercase=lowercase, max_length=max_length)

    @classmethod
    def _split(cls, text: str, lowercase: bool) -> list[str]:
        return cls._WORD_RE.findall(text.lower() if lowercase else text)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.cls_id, self.sep_id)

    def token_to_id(self, token: str) -> int | None:
        return self._index.get(token)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        out = []
        for i in np.asarray(ids).reshape(-1):
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} outside the vocabulary [0, {len(self.vocab)})")
            out.append(self.vocab[i])
        return out

    def tokenize(self, text: str) -> list[int]:
        return [self._index.get(w, self.unk_id) for w in self._split(text, self.lowercase)]

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
               max_length: int | None = None) -> Encoded:
        """`[CLS] a [SEP] (b [SEP])`, truncated longest-first (ties: the second segment) to L."""
        _check_pairs(texts, pairs)
        max_length = int(max_length or self.max_length)
        n_special = 2 if pairs is None else 3
        if max_length < n_special + 1:
            raise ValueError(f"max_length={max_length} too small for {n_special} special tokens")
        rows, num_truncated = [], 0
        for i, text in enumerate(texts):
            a = self.tokenize(text)
            b = [] if pairs is None else self.tokenize(pairs[i])
            budget = max_length - n_special
            if len(a) + len(b) > budget:
                num_truncated += 1
                while len(a) + len(b) > budget:
                    if len(a) > len(b):
                        a.pop()
                    else:
                        b.pop()
            ids = [self.cls_id] + a + [self.sep_id]
            types = [0] * len(ids)
            if pairs is not None:
                ids += b + [self.sep_id]
                types += [1] * (len(b) + 1)
            rows.append((ids, types))
        _log_truncation(num_truncated, len(rows), max_length)
        return _pack(rows, max_length, self.pad_id, num_truncated)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.txt").write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
        (directory / "tokenizer_config.json").write_text(
            json.dumps({"kind": self.kind, "lowercase": self.lowercase}, indent=2))


# ----------------------------------------------------------------------------- ids only


class IdsTokenizer:
    """No vocabulary: ids only, for a model imported without its tokenizer files.

    Such a run reads pre-tokenised data only (``encode`` refuses text); tokens print as
    ``#<id>``. ``special_ids``: the model's start/end ids when its config names them.
    Saved as ``tokenizer_config.json`` (kind ``ids``) in the run's tokenizer directory.
    """

    kind = "ids"

    def __init__(self, vocab_size: int, pad_id: int = 0, special_ids: Sequence[int] = (),
                 max_length: int = DEFAULT_MAX_LENGTH):
        self._vocab_size, self.pad_id = int(vocab_size), int(pad_id)
        self._special = tuple(int(i) for i in special_ids)
        self.max_length = int(max_length)

    @classmethod
    def load(cls, directory: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> IdsTokenizer:
        meta = json.loads((Path(directory) / "tokenizer_config.json").read_text())
        return cls(meta["vocab_size"], meta.get("pad_id", 0), meta.get("special_ids", ()), max_length)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_ids(self) -> tuple[int, ...]:
        return self._special

    def token_to_id(self, token: str) -> int | None:
        return None

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [f"#{int(i)}" for i in np.asarray(ids).reshape(-1)]

    def encode(self, texts, pairs=None, max_length=None) -> Encoded:
        if not len(texts):
            return _pack([], int(max_length or self.max_length), self.pad_id, 0)
        raise DataError("this run has no tokenizer, so it reads pre-tokenised rows only (an input_ids column)",
                        "tokenise the data yourself, or import the model with --tokenizer DIR")

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer_config.json").write_text(json.dumps(
            {"kind": self.kind, "vocab_size": self._vocab_size, "pad_id": self.pad_id,
             "special_ids": list(self._special)}, indent=2))


# ----------------------------------------------------------------------------- Hugging Face


class HFTokenizer:
    """A `tokenizers` WordPiece (bert) or byte-level BPE (roberta) tokenizer.

    Built directly with the `tokenizers` library, not `transformers`' wrappers
    (transformers 5 `BertTokenizerFast(vocab_file=...)` silently ignores the file).
    """

    def __init__(self, tokenizer, kind: str, max_length: int = DEFAULT_MAX_LENGTH):
        if kind == "bert":
            start, end, pad, unk = "[CLS]", "[SEP]", "[PAD]", "[UNK]"
        elif kind == "roberta":
            start, end, pad, unk = "<s>", "</s>", "<pad>", "<unk>"
        else:
            raise ValueError(f"HFTokenizer kind must be 'bert' or 'roberta', got {kind!r}")
        ids = {t: tokenizer.token_to_id(t) for t in (start, end, pad, unk)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{kind} tokenizer vocabulary lacks special token(s) {missing}")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self.kind = kind
        self.max_length = int(max_length)
        self.start_id, self.end_id, self.pad_id, self.unk_id = (ids[t] for t in (start, end, pad, unk))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.start_id, self.end_id)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        out = []
        for i in np.asarray(ids).reshape(-1):
            token = self._tok.id_to_token(int(i))
            if token is None:
                raise ValueError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
            out.append(token)
        return out

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
               max_length: int | None = None) -> Encoded:
        _check_pairs(texts, pairs)
        max_length = int(max_length or self.max_length)
        self._tok.enable_truncation(max_length, strategy="longest_first")
        try:
            inputs = list(texts) if pairs is None else list(zip(texts, pairs))
            encodings = self._tok.encode_batch(inputs)
        finally:
            self._tok.no_truncation()
        num_truncated = sum(1 for e in encodings if e.overflowing)
        zero_types = self.kind == "roberta"
        rows = [(e.ids, [0] * len(e.ids) if zero_types else e.type_ids) for e in encodings]
        _log_truncation(num_truncated, len(rows), max_length)
        return _pack(rows, max_length, self.pad_id, num_truncated)

    def save(self, directory: str | Path) -> None:
        """Writes `tokenizer.json` plus vocab.txt (bert) or vocab.json + merges.txt (roberta)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        self._tok.model.save(str(directory))


def _bert_from_path(path: Path, lowercase: bool):
    import tokenizers

    directory = path if path.is_dir() else path.parent
    json_only = path.is_dir() and not (path / "vocab.txt").exists() and (path / "tokenizer.json").exists()
    if (path.is_file() and path.suffix == ".json") or json_only:
        file = path if path.is_file() else path / "tokenizer.json"
        return tokenizers.Tokenizer.from_file(str(file))  # its own normalizer decides lowercasing
    vocab = path if path.is_file() else directory / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(f"bert tokenizer: no vocab.txt or tokenizer.json at {path}")
    tokens = set(vocab.read_text(encoding="utf-8").splitlines())
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in tokens]
    if missing:
        raise ValueError(f"bert tokenizer: {vocab} lacks special token(s) {missing}")
    return tokenizers.BertWordPieceTokenizer(str(vocab), lowercase=lowercase)


def _roberta_from_path(path: Path):
    import tokenizers
    from tokenizers.processors import RobertaProcessing

    if path.is_file() and path.suffix == ".json" and path.name != "vocab.json":
        return tokenizers.Tokenizer.from_file(str(path))
    directory = path if path.is_dir() else path.parent
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if vocab.is_file() and merges.is_file():
        tok = tokenizers.ByteLevelBPETokenizer(str(vocab), str(merges), add_prefix_space=False)
        # as transformers' RobertaTokenizer: special tokens in text map to their ids, never split
        tok.add_special_tokens([t for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
                                if tok.token_to_id(t) is not None])
        tok.post_processor = RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                               ("<s>", tok.token_to_id("<s>")))
        return tok
    if (directory / "tokenizer.json").is_file():
        return tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    raise FileNotFoundError(f"roberta tokenizer: no vocab.json + merges.txt or tokenizer.json at {path}")


def load_tokenizer(tok_cfg: ml_collections.ConfigDict, corpus: Iterable[str] | None = None):
    """Tokenizer for `tok_cfg` (fields of `default_tokenizer_config`).

    bert: `path` = a dir with vocab.txt (preferred, lowercased per `lowercase`) or
    tokenizer.json, or one of those files. roberta: a dir with vocab.json +
    merges.txt or tokenizer.json. word: `path` = a saved vocabulary dir when it
    holds vocab.txt, else built from `corpus` (training texts).
    """
    kind = tok_cfg.kind
    if kind not in KINDS:
        raise ValueError(f"tokenizer.kind={kind!r}; expected one of {KINDS}")
    max_length = int(tok_cfg.get("max_length", None) or DEFAULT_MAX_LENGTH)
    path = Path(tok_cfg.path) if tok_cfg.get("path", None) else None
    lowercase = tok_cfg.get("lowercase", None)
    if kind == "word":
        if path is not None and (path / "vocab.txt").is_file():
            return WordTokenizer.load(path, lowercase=lowercase, max_length=max_length)
        if corpus is None:
            raise ValueError("tokenizer.kind='word' needs a corpus to build from (or tokenizer.path "
                             f"to a saved vocab.txt; got path={tok_cfg.get('path', None)!r})")
        return WordTokenizer.build(corpus, max_size=int(tok_cfg.get("vocab_size", 5000)),
                                   min_freq=int(tok_cfg.get("min_freq", 1)),
                                   lowercase=True if lowercase is None else bool(lowercase),
                                   max_length=max_length)
    if path is None or not path.exists():
        raise FileNotFoundError(f"tokenizer.kind={kind!r} needs tokenizer.path to a tokenizer "
                                f"directory; got {tok_cfg.get('path', None)!r}")
    if kind == "ids":
        return IdsTokenizer.load(path, max_length=max_length)
    if kind == "bert":
        tok = _bert_from_path(path, lowercase=True if lowercase is None else bool(lowercase))
    else:
        tok = _roberta_from_path(path)
    return HFTokenizer(tok, kind, max_length=max_length)


# ----------------------------------------------------------------------------- encoded datasets

_ARRAYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "ids")


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedDataset:
    """A tokenized `TextDataset`: `input_ids, attention_mask, token_type_ids [N, L] int32`,
    `labels [N] int32`, `ids [N] int64` (source row ids), plus what batching needs."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    pad_id: int = 0
    label_names: tuple[str, ...] = ()
    name: str = ""
    num_truncated: int = 0
    source_fingerprint: str = ""  # TextDataset.fingerprint() of the encoded texts

    def __post_init__(self):
        casts = {"input_ids": np.int32, "attention_mask": np.int32, "token_type_ids": np.int32,
                 "labels": np.int32, "ids": np.int64}
        for key, dtype in casts.items():
            object.__setattr__(self, key, np.asarray(getattr(self, key)).astype(dtype, copy=False))
        n, length = self.input_ids.shape if self.input_ids.ndim == 2 else (None, None)
        if n is None:
            raise ValueError(f"input_ids must be [N, L], got shape {self.input_ids.shape}")
        for key in ("attention_mask", "token_type_ids"):
            if getattr(self, key).shape != (n, length):
                raise ValueError(f"{key} shape {getattr(self, key).shape} != input_ids {(n, length)}")
        for key in ("labels", "ids"):
            if getattr(self, key).shape != (n,):
                raise ValueError(f"{key} shape {getattr(self, key).shape}, expected ({n},)")
        object.__setattr__(self, "label_names", tuple(self.label_names))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def max_length(self) -> int:
        return self.input_ids.shape[1]

    def subset(self, indices) -> EncodedDataset:
        """Rows at `indices` (ints or a boolean mask); `num_truncated` and the fingerprint reset."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        arrays = {k: getattr(self, k)[idx] for k in _ARRAYS}
        return dataclasses.replace(self, **arrays, num_truncated=0, source_fingerprint="")

    def save(self, directory: str | Path) -> None:
        """`<array>.npy` for each array (no pickle) and `meta.json` for the rest."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for key in _ARRAYS:
            np.save(directory / f"{key}.npy", getattr(self, key), allow_pickle=False)
        meta = {"pad_id": int(self.pad_id), "label_names": list(self.label_names), "name": self.name,
                "num_truncated": int(self.num_truncated),
                "source_fingerprint": self.source_fingerprint, "num_examples": len(self),
                "max_length": self.max_length}
        (directory / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> EncodedDataset:
        directory = Path(directory)
        meta_file = directory / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} not found: not a saved EncodedDataset")
        meta = json.loads(meta_file.read_text())
        arrays = {k: np.load(directory / f"{k}.npy", allow_pickle=False) for k in _ARRAYS}
        if len(arrays["ids"]) != meta["num_examples"]:
            raise ValueError(f"{directory}: meta.json says {meta['num_examples']} examples, arrays "
                             f"hold {len(arrays['ids'])}")
        return cls(**arrays, pad_id=meta["pad_id"], label_names=tuple(meta["label_names"]),
                   name=meta["name"], num_truncated=meta["num_truncated"],
                   source_fingerprint=meta["source_fingerprint"])


def encode_dataset(ds: TextDataset, tokenizer, max_length: int | None = None) -> EncodedDataset:
    """Tokenizes `ds` (pairs when `ds.text_pairs` is set) into `[N, max_length]` arrays.

    A pre-tokenised `ds` (`ds.token_ids` set) is packed as given instead, see
    `pack_token_ids`.
    """
    if ds.token_ids is not None:
        enc = pack_token_ids(ds, tokenizer, max_length)
    else:
        enc = tokenizer.encode(ds.texts, ds.text_pairs, max_length=max_length)
    return EncodedDataset(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                          token_type_ids=enc.token_type_ids, labels=ds.labels, ids=ds.ids,
                          pad_id=tokenizer.pad_id, label_names=ds.label_names, name=ds.name,
                          num_truncated=enc.num_truncated, source_fingerprint=ds.fingerprint())


def pack_token_ids(ds: TextDataset, tokenizer, max_length: int | None = None) -> Encoded:
    """Pads the pre-tokenised examples of `ds` to `[N, L]` with `tokenizer.pad_id`.

    The ids are used as given (they must already hold the model's special tokens, e.g.
    `[CLS] ... [SEP]`). With an attention mask, only its leading 1s are the example
    (1s then 0s: right padding; anything else is refused). Examples longer than L are
    cut to their first L tokens, counted in `num_truncated` and logged like text
    truncation. Token ids < 0 or >= `tokenizer.vocab_size` are a `DataError`.
    """
    max_length = int(max_length or tokenizer.max_length)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    vocab_size = int(tokenizer.vocab_size)
    masks, types = ds.token_masks, ds.token_types
    rows, num_truncated = [], 0
    for i, ids in enumerate(ds.token_ids):
        where = f"{ds.name or 'dataset'}: example id {int(ds.ids[i])}"
        n = len(ids)
        if masks is not None:
            mask = masks[i]
            n = int(np.count_nonzero(mask))
            if not (np.isin(mask, (0, 1)).all() and mask[:n].all()):
                raise DataError(f"{where} has attention_mask {mask.tolist()}, not 1s followed by 0s",
                                "give right-padded rows (or no attention_mask)")
        ids = ids[:n]
        if n and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
            raise DataError(f"{where} has token id {bad} outside the {tokenizer.kind} tokenizer's "
                            f"vocabulary [0, {vocab_size})",
                            "pre-tokenised input_ids must come from the tokenizer the run uses "
                            "(tokenizer.kind / tokenizer.path)")
        if n > max_length:
            num_truncated += 1
            n = max_length
        type_ids = np.zeros(n, np.int64) if types is None else types[i][:n]
        rows.append((ids[:n].tolist(), type_ids.tolist()))
    _log_truncation(num_truncated, len(rows), max_length)
    return _pack(rows, max_length, tokenizer.pad_id, num_truncated)
