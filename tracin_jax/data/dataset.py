"""`TextDataset`: the in-memory text classification split every source produces.

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
    """

    texts: tuple[str, ...]
    text_pairs: tuple[str, ...] | None
    labels: np.ndarray
    ids: np.ndarray
    label_names: tuple[str, ...]
    name: str = ""

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
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "text_pairs", pairs)
        object.__setattr__(self, "labels", labels.astype(np.int32))
        object.__setattr__(self, "ids", ids.astype(np.int64))
        object.__setattr__(self, "label_names", label_names)

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
        return TextDataset(texts=tuple(self.texts[i] for i in idx), text_pairs=pairs,
                           labels=self.labels[idx], ids=self.ids[idx],
                           label_names=self.label_names, name=self.name)

    def fingerprint(self) -> str:
        """sha256 hex digest over ids, labels, texts and text pairs (order matters)."""
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
