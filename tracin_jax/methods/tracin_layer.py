"""``tracin_layer[name]`` and ``tracin_all``: TracIn on any parameter group (paper Table 1).

    tracin_layer[W](x, x') = Σ_c η_c ⟨∂ℓ(x)/∂W_c, ∂ℓ(x')/∂W_c⟩

for W = the weights of one or more named groups (``models.parameter_groups``:
``word_embedding``, ``embeddings``, ``layer_i``/``conv_i``, ``pooler``,
``classifier``), biases excluded unless ``include_bias``; ``tracin_all`` uses every
group. Sign as every TracIn score (SPEC): score > 0 = proponent. The stores only
name the examples: gradients are recomputed from the run's checkpoints and
encoded data (``grads.param_grads``), the test side once per checkpoint, the
training side chunk by chunk. ``tracin_layer[classifier]`` equals ``tracin_last``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tracin_jax.grads.param_grads import ParamGradients, group_paths
from tracin_jax.methods.base import Method, MethodError, shared_checkpoints
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
        self._engines: dict = {}
        self._test_grads: dict = {}

    def prepare(self, test_store, train_store, context=None):
        ckpts = shared_checkpoints(test_store, train_store)
        self.context = require_context(context, self.name, "model, checkpoints and encoded data")
        self._test_split = self.context.split_for(test_store).encoded
        self._train_split = self.context.split_for(train_store).encoded
        try:
            paths = group_paths(self.context.params(ckpts[0].step), self.groups, self.include_bias)
        except ValueError as e:
            raise MethodError(f"{self.name}: {e}") from e
        if (self.context.model, paths) != getattr(self, "_compiled_for", None):
            self._engines.clear()  # compiled for another model or parameter set
            self._compiled_for = (self.context.model, paths)
        self.paths = paths
        self._test_grads.clear()

    def _engine(self, mesh) -> ParamGradients:
        key = id(mesh) if mesh is not None else None
        if key not in self._engines:
            self._engines[key] = ParamGradients(self.context.model, self.paths, mesh=mesh,
                                                chunk_size=self.chunk_size)
        return self._engines[key]

    @staticmethod
    def _rows(block, encoded) -> np.ndarray:
        rows = np.asarray(block["position"], np.int64)
        if not np.array_equal(np.asarray(encoded.ids)[rows], block["example_id"]):
            raise MethodError("store example ids do not match the run's encoded data at the "
                              "same positions")
        return rows

    def score_block(self, test, train, step, mesh=None):
        if self.context is None:
            raise MethodError(f"{self.name}: call prepare() first")
        engine = self._engine(mesh)
        params = self.context.params(step)
        test_rows = self._rows(test, self._test_split)
        key = (step, test_rows.tobytes())
        if key not in self._test_grads:  # once per checkpoint: memory C·M·P floats
            self._test_grads[key] = engine.grads(params, self._test_split, test_rows)
        return engine.scores(params, self._test_grads[key], self._train_split,
                             self._rows(train, self._train_split))

    def self_scores(self, block, step, mesh=None):
        engine = self._engine(mesh)
        return engine.squared_norms(self.context.params(step), self._train_split,
                                    self._rows(block, self._train_split))

    def describe(self):
        return {"name": self.name, "groups": self.groups, "include_bias": self.include_bias}
