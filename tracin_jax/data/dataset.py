"""`TextDataset`: the in-memory text classification split every source produces.

An example is either text (`texts`, optional `text_pairs`: the tokenizer encodes it)
or pre-tokenised (`token_ids`, with optional `token_masks` / `token_types`: packed
to `[N, L]` as given, see `tokenize.encode_dataset`); a pre-tokenised dataset may
still carry texts for display, or empty strings.

Also the two seeded index pickers used around it: deterministic subsampling of a
split (`subsample_indices`) and class-balanced test-point selection
(`select_test_points`).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class TextDataset:
    """One split of a text classification data set.

    Attributes:
      texts: first (or only) text segment of each example, `N` strings.
      text_pairs: second segment (e.g. the MNLI hypothesis), `N` strings, or None.
      labels: `[N] int32`, each in `[0, len(label_names))`.
      ids: `[N] int64` stable example ids = row index in the source split; they
        survive subsampling and `subset`.
      label_names: class names; class `c` is `label_names[c]`.
      name: where the split came from, e.g. ``"ag_news_subset:train"``.
      token_ids: None (text examples), or `N` 1-D int64 arrays: each example's token
        ids as the file gave them (special tokens included), not yet padded.
      token_masks: None (all ones), or `N` arrays of 0/1 as long as `token_ids[i]`.
      token_types: None (all zeros), or `N` int arrays as long as `token_ids[i]`.
    """

    texts: tuple[str, ...]
    text_pairs: tuple[str, ...] | None
    labels: np.ndarray
    ids: np.ndarray
    label_names: tuple[str, ...]
    name: str = ""
    token_ids: tuple[np.ndarray, ...] | None = None
    token_masks: tuple[np.ndarray, ...] | None = None
    token_types: tuple[np.ndarray, ...] | None = None

    def __post_init__(self):
        texts = tuple(self.texts)
        pairs = None if self.text_pairs is None else tuple(self.text_pairs)
        labels = np.asarray(self.labels)
        ids = np.asarray(self.ids)
        n = len(texts)
        if labels.shape != (n,) or ids.shape != (n,):
            raise ValueError(f"TextDataset {self.name!r}: {n} texts but labels shape {labels.shape} "
                             f"and ids shape {ids.shape}; expected ({n},) for both")
        if pairs is not None and len(pairs) != n:
            raise ValueError(f"TextDataset {self.name!r}: {n} texts but {len(pairs)} text_pairs")
        if n and not (np.issubdtype(labels.dtype, np.integer) and np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"TextDataset {self.name!r}: labels and ids must be integers, got "
                             f"{labels.dtype} and {ids.dtype}")
        label_names = tuple(str(x) for x in self.label_names)
        if n and (labels.min() < 0 or labels.max() >= len(label_names)):
            bad = labels[(labels < 0) | (labels >= len(label_names))][0]
            raise ValueError(f"TextDataset {self.name!r}: label {bad} outside [0, {len(label_names)}) "
                             f"for label_names {label_names}")
        if len(np.unique(ids)) != n:
            raise ValueError(f"TextDataset {self.name!r}: ids are not unique")
        token_ids, masks, types = self._check_tokens(n)
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "text_pairs", pairs)
        object.__setattr__(self, "token_ids", token_ids)
        object.__setattr__(self, "token_masks", masks)
        object.__setattr__(self, "token_types", types)
        object.__setattr__(self, "labels", labels.astype(np.int32))
        object.__setattr__(self, "ids", ids.astype(np.int64))
        object.__setattr__(self, "label_names", label_names)

    def _check_tokens(self, n: int):
        """token_ids / masks / types as tuples of 1-D int64 arrays, one per example, or None."""
        if self.token_ids is None:
            if self.token_masks is not None or self.token_types is not None:
                raise ValueError(f"TextDataset {self.name!r}: token_masks / token_types without token_ids")
            return None, None, None
        out = []
        for key in ("token_ids", "token_masks", "token_types"):
            seqs = getattr(self, key)
            if seqs is None:
                out.append(None)
                continue
            seqs = tuple(np.asarray(s) for s in seqs)
            if len(seqs) != n:
                raise ValueError(f"TextDataset {self.name!r}: {n} examples but {len(seqs)} {key}")
            for i, s in enumerate(seqs):
                if s.ndim != 1 or (s.size and not np.issubdtype(s.dtype, np.integer)):
                    raise ValueError(f"TextDataset {self.name!r}: {key}[{i}] must be a 1-D integer array, "
                                     f"got {s.dtype} of shape {s.shape}")
                if out and s.shape != out[0][i].shape:
                    raise ValueError(f"TextDataset {self.name!r}: {key}[{i}] has {s.size} entries but "
                                     f"token_ids[{i}] has {out[0][i].size}")
            out.append(tuple(s.astype(np.int64) for s in seqs))
        return tuple(out)

    @property
    def pretokenized(self) -> bool:
        return self.token_ids is not None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, indices) -> TextDataset:
        """Examples at positions `indices` (ints, or a boolean mask of length N), ids kept."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask of shape {idx.shape} for a dataset of {len(self)}")
            idx = np.flatnonzero(idx)
        idx = idx.reshape(-1)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"subset indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(f"subset index out of range [0, {len(self)}): min {idx.min()}, "
                             f"max {idx.max()}")
        pairs = None if self.text_pairs is None else tuple(self.text_pairs[i] for i in idx)

        def pick(seqs):
            return None if seqs is None else tuple(seqs[i] for i in idx)

        return TextDataset(texts=tuple(self.texts[i] for i in idx), text_pairs=pairs,
                           labels=self.labels[idx], ids=self.ids[idx],
                           label_names=self.label_names, name=self.name,
                           token_ids=pick(self.token_ids), token_masks=pick(self.token_masks),
                           token_types=pick(self.token_types))

    def fingerprint(self) -> str:
        """sha256 hex digest over ids, labels, texts, text pairs and, when pre-tokenised,
        the token ids, masks and types (order matters; text-only datasets hash as before)."""
        h = hashlib.sha256()
        h.update(self.ids.astype("<i8").tobytes())
        h.update(self.labels.astype("<i4").tobytes())
        segments = [self.texts] + ([] if self.text_pairs is None else [self.text_pairs])
        for seg_index, segment in enumerate(segments):
            h.update(f"segment{seg_index}".encode())
            for text in segment:
                raw = text.encode("utf-8")
                h.update(len(raw).to_bytes(8, "little"))  # length prefix: no concatenation ambiguity
                h.update(raw)
        if self.token_ids is not None:
            for key in ("token_ids", "token_masks", "token_types"):
                seqs = getattr(self, key)
                h.update(f"{key}:{'none' if seqs is None else 'set'}".encode())
                for seq in seqs or ():
                    raw = seq.astype("<i8").tobytes()
                    h.update(len(raw).to_bytes(8, "little"))
                    h.update(raw)
        return h.hexdigest()


def subsample_indices(n: int, max_n: int | None, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted positions of a seeded subsample without replacement, `[min(n, max_n)] int64`.

    All of `range(n)` when `max_n` is None or at least `n`. Deterministic for
    `(n, max_n, seed)`; `seed` may be a sequence of ints (e.g. `[seed, stream]`).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_n is not None and max_n < 0:
        raise ValueError(f"max_n must be >= 0 or None, got {max_n}")
    if max_n is None or max_n >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_n, replace=False)).astype(np.int64)


def select_test_points(ds: TextDataset, per_class: int, seed: int,
                       classes: Sequence[int] | None = None) -> np.ndarray:
    """Seeded, class-balanced choice of test points.

    Returns positions into `ds` (not ids), `[per_class * n_classes] int64`: for each
    class in `classes` (default: every class of `ds.label_names`, in order),
    `per_class` positions drawn without replacement, sorted within the class.

    Raises:
      ValueError: when a class has fewer than `per_class` examples.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    classes = range(ds.num_classes) if classes is None else classes
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        if not 0 <= c < ds.num_classes:
            raise ValueError(f"class {c} not in [0, {ds.num_classes})")
        members = np.flatnonzero(ds.labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} ({ds.label_names[c]!r}) of {ds.name!r} has {len(members)} "
                             f"examples, fewer than per_class={per_class}")
        chosen.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)
