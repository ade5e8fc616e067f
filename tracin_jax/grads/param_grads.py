"""Per-example gradients w.r.t. named parameter groups (``tracin_layer[name]`` / ``tracin_all``, docs/method.md).

For a set of parameter paths W (one or more groups of ``models.parameter_groups``,
biases excluded unless asked), the per-example gradient is ``∂ℓ(x)/∂W`` flattened
to ``[P]`` (leaves in path order, each row-major). Computed as
``vmap(grad(ℓ_i))`` over a chunk of examples, the chunk split over the mesh's
``data`` axis with ``jax.shard_map``; only one chunk of gradients ``[chunk, P]``
exists at a time, so memory is bounded by ``chunk · P`` floats per device plus
the test gradients ``[M, P]``.

This is a separate forward/backward. To get the same gradients from the pass that
computes the word-embedding gradients, pass ``param_paths=group_paths(...)`` to
``embedding_grads.make_gradient_fn`` / ``per_example_outputs`` (field ``param_grads``)
or to ``extract_gradients`` / ``tracin-jax grads --param-groups`` (stored per example).
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, PartitionSpec as P

from tracin_jax import mesh as mesh_lib
from tracin_jax.grads.extract import batch_rows
from tracin_jax.models import is_bias, parameter_groups

Path = tuple[str, ...]
# Default per-device chunk: at most 2**24 gradient floats (64 MiB) and 64 examples.
_CHUNK_ELEMENTS = 2**24
_MAX_CHUNK = 64
_PRECISION = jax.lax.Precision.HIGHEST


def group_paths(params, groups: Sequence[str] | None = None,
                include_bias: bool = False) -> list[Path]:
    """Parameter paths of ``groups`` (None = every group), biases dropped unless asked."""
    available = parameter_groups(params)
    names = list(available) if groups is None else list(groups)
    unknown = [g for g in names if g not in available]
    if unknown or not names:
        raise ValueError(f"unknown parameter groups {unknown or names}; available: {list(available)}")
    paths = [p for g in names for p in available[g] if include_bias or not is_bias(p)]
    if not paths:
        raise ValueError(f"groups {names} have no parameters with include_bias={include_bias}")
    return paths


def num_parameters(params, paths: Sequence[Path]) -> int:
    flat = traverse_util.flatten_dict(params)
    return int(sum(np.prod(np.shape(flat[p])) for p in paths))


def _per_example_grads(model, paths, params, batch):
    """``[B, P]`` float32: vmap over examples of ∂ℓ(x)/∂(params at ``paths``), flattened."""
    flat = traverse_util.flatten_dict(params)
    selected = [flat[p] for p in paths]

    def loss(chosen, ids, mask, types, label):
        full = dict(flat)
        full.update(zip(paths, chosen))
        out = model.apply({"params": traverse_util.unflatten_dict(full)}, ids[None], mask[None],
                          types[None], deterministic=True)
        return optax.softmax_cross_entropy_with_integer_labels(
            out.logits[0].astype(jnp.float32), label)

    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0, 0))(
        selected, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
        batch["labels"])
    return jnp.concatenate([g.reshape(g.shape[0], -1).astype(jnp.float32) for g in grads], axis=1)


def _chunk_size(num_params: int, devices: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return mesh_lib.pad_to_multiple(int(chunk_size), devices)
    per_device = int(np.clip(_CHUNK_ELEMENTS // max(num_params, 1), 1, _MAX_CHUNK))
    return per_device * devices


class ParamGradients:
    """Per-example parameter-group gradients of one model, sharded over a local mesh.

    Args:
      model: Flax module; paths: parameter paths (``group_paths``).
      mesh: 1-D ``data`` mesh (default: this process's devices).
      chunk_size: examples per step over the whole mesh (default from the memory bound).
    """

    def __init__(self, model, paths: Sequence[Path], *, mesh: Mesh | None = None,
                 chunk_size: int | None = None):
        self.model, self.paths = model, [tuple(p) for p in paths]
        self.mesh = mesh or mesh_lib.make_local_mesh()
        self._chunk_size = chunk_size
        body = partial(_per_example_grads, model, self.paths)
        data = P(mesh_lib.DATA_AXIS)
        self._grads = jax.jit(jax.shard_map(body, mesh=self.mesh, in_specs=(P(), data),
                                            out_specs=data, check_vma=False))

        def scores(params, test_grads, batch):  # [M, P] x [b, P] -> [M, b] on each device
            g = body(params, batch)
            return jax.lax.dot_general(test_grads, g, (((1,), (1,)), ((), ())),
                                       precision=_PRECISION, preferred_element_type=jnp.float32)

        self._scores = jax.jit(jax.shard_map(scores, mesh=self.mesh, in_specs=(P(), P(), data),
                                             out_specs=P(None, mesh_lib.DATA_AXIS), check_vma=False))
        self._sq_norms = jax.jit(jax.shard_map(
            lambda params, batch: jnp.sum(jnp.square(body(params, batch)), axis=1),
            mesh=self.mesh, in_specs=(P(), data), out_specs=data, check_vma=False))

    def _chunks(self, params, encoded, rows):
        rows = np.asarray(rows, np.int64)
        devices = len(self.mesh.local_devices)
        size = _chunk_size(num_parameters(params, self.paths), devices, self._chunk_size)
        # Small requests get a smaller chunk: powers of two per device keep recompiles few.
        per_device = -(-len(rows) // devices)
        size = min(size, devices * (1 << max(per_device - 1, 0).bit_length()))
        for start in range(0, len(rows), size):
            batch, n = batch_rows(encoded, rows[start:start + size], size)
            yield mesh_lib.shard_batch(batch, self.mesh), n

    def grads(self, params, encoded, rows) -> np.ndarray:
        """``[len(rows), P]`` float32 gradients of the examples at ``rows`` of ``encoded``."""
        params = mesh_lib.replicate(params, self.mesh)
        parts = [np.asarray(self._grads(params, batch))[:n] for batch, n in self._chunks(params, encoded, rows)]
        return np.concatenate(parts) if parts else np.zeros((0, num_parameters(params, self.paths)), np.float32)

    def scores(self, params, test_grads: np.ndarray, encoded, rows) -> np.ndarray:
        """``[M, len(rows)]`` float32 ``⟨test_grads[m], ∂ℓ(x_r)/∂W⟩`` without keeping train gradients."""
        params = mesh_lib.replicate(params, self.mesh)
        test = mesh_lib.replicate(jnp.asarray(test_grads, jnp.float32), self.mesh)
        parts = [np.asarray(self._scores(params, test, batch))[:, :n]
                 for batch, n in self._chunks(params, encoded, rows)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(test_grads), 0), np.float32)

    def squared_norms(self, params, encoded, rows) -> np.ndarray:
        """``[len(rows)]`` float32 ``‖∂ℓ(x_r)/∂W‖²`` (self-influence)."""
        params = mesh_lib.replicate(params, self.mesh)
        parts = [np.asarray(self._sq_norms(params, batch))[:n] for batch, n in self._chunks(params, encoded, rows)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
