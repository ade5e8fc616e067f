"""The one caching rule for compiled programs: explicit keys, bounded size.

A jitted function compiles once per input shape; building a new ``jax.jit(...)`` wrapper
for every call (every epoch, every replica group) throws that away. Code that builds
device programs asks a :class:`ProgramCache` instead, with a key naming everything the
program depends on (model, settings that are traced, mesh, shapes it is specialised
for). The least recently used program is dropped past ``maxsize``, so a long-lived
process (a notebook, a sweep worker) does not grow without bound.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any

# Programs kept by the shared cache: the retraining engine needs a few per batch width
# (scan lengths) and one evaluation program per model and mesh.
DEFAULT_MAXSIZE = 64


class ProgramCache:
    """``get(key, build)``: the program cached under ``key``, built by ``build()`` on a miss."""

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self._programs: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0  # programs built so far (tests check reuse)

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._programs:
                self._programs.move_to_end(key)
                return self._programs[key]
        program = build()
        with self._lock:
            self._programs[key] = program
            self._programs.move_to_end(key)
            self.builds += 1
            while len(self._programs) > self.maxsize:
                self._programs.popitem(last=False)
        return program

    def __len__(self) -> int:
        return len(self._programs)

    def clear(self) -> None:
        with self._lock:
            self._programs.clear()


# Shared by the training, evaluation and retraining programs of the whole process.
PROGRAMS = ProgramCache()
