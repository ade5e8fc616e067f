"""A gradient store held in memory: the same read interface as ``GradientStore``, no files.

``tracin_jax.influence`` (notebooks, small sets) computes records with the gradient engine
and scores them with the same methods and kernels as the on-disk path; this class is what
lets them read the records without writing a store. Records are validated as the writer
validates them (required fields, shapes, finite values).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from tracin_jax.errors import NonFiniteError, UsageError
from tracin_jax.store.gradient_store import CORE_FIELDS, CheckpointInfo, shard_range


class MemoryStore:
    """Records ``{step: {field: array [N, ...]}}`` of N examples over checkpoints.

    Args:
      records: per checkpoint step, the fields a gradient store holds (``CORE_FIELDS``).
      checkpoints: ``CheckpointInfo`` (step, learning rate, parameter fingerprint) in order.
      k: top-k of the per-token vectors (None: exact), as a store's manifest records it.
      model_info / split / fingerprint: what a store's manifest records (checked by methods).
      shard_size: records per block handed to the methods (the streaming unit).
    """

    def __init__(self, records: Mapping[int, Mapping[str, np.ndarray]], checkpoints: Sequence[CheckpointInfo], *,
                 k: int | None, model_info: dict | None = None, split: str = "memory", fingerprint: str = "",
                 dtype: str = "float32", shard_size: int = 4096, name: str = "memory"):
        steps = [c.step for c in checkpoints]
        if sorted(records) != sorted(steps):
            raise UsageError(f"records for steps {sorted(records)} but checkpoints {steps}")
        first = records[steps[0]]
        missing = [f for f in CORE_FIELDS if f not in first]
        if missing:
            raise UsageError(f"records lack required fields {missing}")
        self.num_examples = int(len(first["example_id"]))
        for step, rec in records.items():
            for name_, array in rec.items():
                if len(array) != self.num_examples:
                    raise UsageError(f"field {name_!r} at step {step} has {len(array)} records, not {self.num_examples}")
                if np.issubdtype(np.asarray(array).dtype, np.floating) and not np.isfinite(array).all():
                    rows = np.flatnonzero(~np.isfinite(np.asarray(array).reshape(len(array), -1)).all(axis=1))
                    raise NonFiniteError(f"field {name_!r} at checkpoint {step} is not finite for example ids "
                                         f"{np.asarray(rec['example_id'])[rows[:10]].tolist()}",
                                         "the model or its parameters give NaN/inf for these inputs")
        self._records = {int(s): dict(r) for s, r in records.items()}
        self.checkpoints = list(checkpoints)
        self.shard_size = int(shard_size)
        self.num_shards = max(1, math.ceil(self.num_examples / self.shard_size))
        self.dtype = dtype
        self.directory = Path(f"<memory:{name}>")
        self.fields = {n: (tuple(np.shape(a)[1:]), str(np.asarray(a).dtype)) for n, a in first.items()}
        self.manifest = {"k": k, "model_info": dict(model_info or {}), "split": split, "fingerprint": fingerprint,
                         "num_examples": self.num_examples, "dtype": dtype, "complete": True,
                         "checkpoints": [c.__dict__ for c in self.checkpoints]}

    def shard_range(self, shard_index: int) -> tuple[int, int]:
        return shard_range(shard_index, self.shard_size, self.num_examples)

    def iter_shards(self, step: int, fields: Sequence[str] | None = None, verify: bool = True,
                    shard_indices: Sequence[int] | None = None) -> Iterator[dict[str, np.ndarray]]:
        if int(step) not in self._records:
            raise ValueError(f"step {step} not in store; available: {sorted(self._records)}")
        rec = self._records[int(step)]
        names = list(rec) if fields is None else list(fields)
        unknown = sorted(set(names) - set(rec))
        if unknown:
            raise ValueError(f"unknown fields {unknown}; store has {sorted(rec)}")
        for i in (range(self.num_shards) if shard_indices is None else shard_indices):
            start, stop = self.shard_range(i)
            yield {n: rec[n][start:stop] for n in names}

    def load(self, step: int, fields: Sequence[str] | None = None, verify: bool = True) -> dict[str, np.ndarray]:
        rec = self._records[int(step)]
        return {n: np.asarray(rec[n]) for n in (rec if fields is None else fields)}

    def verify(self) -> int:
        return len(self.checkpoints) * self.num_shards
