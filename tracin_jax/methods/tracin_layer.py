"""``tracin_layer[name]`` and ``tracin_all``: TracIn on any parameter group (paper Table 1).

    tracin_layer[W](x, x') = Σ_c η_c ⟨∂ℓ(x)/∂W_c, ∂ℓ(x')/∂W_c⟩

for W = the weights of one or more named groups (``models.parameter_groups``:
``word_embedding``, ``embeddings``, ``layer_i``/``conv_i``, ``pooler``,
``classifier``), biases excluded unless ``include_bias``; ``tracin_all`` uses every
group. Sign as every TracIn score: score > 0 = proponent.

Two sources of the per-example gradients, same scores (tests/test_grads_param_groups.py):
- *stored*: both stores were extracted with ``tracin-jax grads --param-groups ...`` covering
  the method's parameters (field ``param_grads``, manifest ``model_info.param_paths`` and
  ``param_sizes``): the scores are Gram products of the stored rows (the needed columns),
  with no run and no recomputation;
- *recomputed*: otherwise, from the run's checkpoints and encoded data
  (``grads.param_grads``), the test side once per checkpoint, the training side chunk by
  chunk; needs the run (``RunContext``).
``tracin_layer[classifier]`` equals ``tracin_last``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import traverse_util

from tracin_jax.grads.param_grads import ParamGradients, group_paths
from tracin_jax.kernels import gram
from tracin_jax.methods.base import Method, MethodError, shared_checkpoints, sharded_block_scores
from tracin_jax.programs import PROGRAMS
from tracin_jax.methods.context import require_context


class TracInLayer(Method):
    """TracIn on parameter groups ``groups`` (None = all: ``tracin_all``)."""

    fields = ()

    def __init__(self, groups: Sequence[str] | None = None, include_bias: bool = False,
                 chunk_size: int | None = None):
        if groups is not None and (isinstance(groups, str) or not groups):
            raise ValueError(f"groups must be a non-empty list of group names or None, got {groups!r}")
        self.groups = None if groups is None else [str(g) for g in groups]
        self.include_bias = bool(include_bias)
        self.chunk_size = chunk_size
        self.name = ("tracin_all" if self.groups is None else f"tracin_layer[{','.join(self.groups)}]") \
            + ("+bias" if self.include_bias else "")
        self.context = None
        self.paths: list[tuple[str, ...]] | None = None
        self.columns: np.ndarray | None = None  # stored mode: param_grads columns of ``paths``

    def _paths(self, tree) -> list[tuple[str, ...]]:
        try:
            return group_paths(tree, self.groups, self.include_bias)
        except ValueError as e:
            raise MethodError(f"{self.name}: {e}") from e

    def _bind(self, test_store, train_store, context):
        ckpts = shared_checkpoints(test_store, train_store)
        self.context = context
        columns = _stored_columns(test_store, train_store, self._paths)
        if columns is not None:
            self.paths, self.columns = columns
            self.fields = ("param_grads",)
            return
        self.context = require_context(context, self.name, "model, checkpoints and encoded data (or stores "
                                       "extracted with --param-groups covering these parameters)")
        self._test_split = self.context.split_for(test_store).encoded
        self._train_split = self.context.split_for(train_store).encoded
        self.paths = self._paths(self.context.params(ckpts[0].step))
        self._test_grads: dict = {}  # (step, test rows) -> [M, P]: the test side once per checkpoint

    @property
    def stored(self) -> bool:
        return self.columns is not None

    def _engine(self, mesh) -> ParamGradients:
        key = ("param_gradients", self.context.model, tuple(self.paths), mesh, self.chunk_size)
        return PROGRAMS.get(key, lambda: ParamGradients(self.context.model, self.paths, mesh=mesh,
                                                        chunk_size=self.chunk_size))

    @staticmethod
    def _rows(block, encoded) -> np.ndarray:
        rows = np.asarray(block["position"], np.int64)
        if not np.array_equal(np.asarray(encoded.ids)[rows], block["example_id"]):
            raise MethodError("store example ids do not match the run's encoded data at the "
                              "same positions")
        return rows

    def _check_bound(self):
        if self.paths is None:
            raise MethodError(f"{self.name}: prepare it for the stores first (method.prepare(test_store, train_store))")

    def score_block(self, test, train, step, mesh=None):
        self._check_bound()
        if self.stored:
            take = lambda block: {"g": np.asarray(block["param_grads"])[:, self.columns]}
            return sharded_block_scores(self, _gram_kernel, take(test), take(train), mesh)
        engine = self._engine(mesh)
        params = self.context.params(step)
        test_rows = self._rows(test, self._test_split)
        key = (step, test_rows.tobytes())
        if key not in self._test_grads:  # memory: C·M·P floats
            self._test_grads[key] = engine.grads(params, self._test_split, test_rows)
        return engine.scores(params, self._test_grads[key], self._train_split,
                             self._rows(train, self._train_split))

    def self_scores(self, block, step, mesh=None):
        self._check_bound()
        if self.stored:
            g = np.asarray(block["param_grads"], np.float64)[:, self.columns]
            return np.einsum("np,np->n", g, g).astype(np.float32)
        engine = self._engine(mesh)
        return engine.squared_norms(self.context.params(step), self._train_split,
                                    self._rows(block, self._train_split))

    def describe(self):
        return {"name": self.name, "groups": self.groups, "include_bias": self.include_bias,
                "source": None if self.paths is None else ("stored" if self.stored else "recomputed")}


def _gram_kernel(test, train):
    return gram(test["g"], train["g"])


def _stored_columns(test_store, train_store, paths_of):
    """``(paths, columns)`` when both stores hold ``param_grads`` covering the method's
    parameters (the same stored layout), else None."""
    infos = [s.manifest.get("model_info") or {} for s in (test_store, train_store)]
    layouts = [(tuple(i.get("param_paths") or ()), tuple(i.get("param_sizes") or ())) for i in infos]
    stored_paths, sizes = layouts[0]
    if not stored_paths or layouts[0] != layouts[1] or len(sizes) != len(stored_paths):
        return None
    for store in (test_store, train_store):
        if not store.fields or "param_grads" not in store.fields:
            return None
    as_tuples = [tuple(p.split("/")) for p in stored_paths]
    tree = traverse_util.unflatten_dict({p: 0 for p in as_tuples})
    try:
        paths = paths_of(tree)
    except MethodError:  # a group the stores do not hold
        return None
    if not set(paths) <= set(as_tuples):
        return None
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    where = {p: i for i, p in enumerate(as_tuples)}
    columns = np.concatenate([np.arange(offsets[where[p]], offsets[where[p] + 1]) for p in paths])
    return paths, columns.astype(np.int64)
