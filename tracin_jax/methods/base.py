"""What every influence method shares: checkpoint weights, blocks of records, device sharding.

A method scores a block of test records against a block of training records, one
checkpoint at a time; the retrieval engine (``methods.retrieval``) sums the
per-checkpoint scores with the method's checkpoint weights (``η_c`` for the TracIn
family, a single 1.0 at the final checkpoint for influence functions and
representer points) and ranks them. All methods follow the sign convention of docs/method.md:
**score > 0 = proponent** (training on x lowered the loss on x').

A *block* is a dict of per-record numpy arrays read from a gradient store (the
fields the method lists in ``fields`` plus ``example_id`` and ``label``) with one
extra entry, ``position [N] int64``: each record's row in its store (= the
dataset position), which identifies the example in the run's data.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from tracin_jax import mesh as mesh_lib
from tracin_jax.errors import MismatchError, TracinError
from tracin_jax.store import GradientStore

if TYPE_CHECKING:  # context.py imports this module
    from tracin_jax.methods.context import RunContext

Block = dict[str, np.ndarray]
# Read for every method: ids name the examples, labels feed the report.
ALWAYS_FIELDS = ("example_id", "label")


class MethodError(TracinError, ValueError):
    """A method cannot run on the given stores or context (wrong k, missing run...)."""


@dataclasses.dataclass(frozen=True)
class CheckpointWeight:
    step: int
    weight: float


def shared_checkpoints(test_store: GradientStore, train_store: GradientStore):
    """The checkpoints of two stores, which must agree on steps and learning rates."""
    test = [(c.step, c.learning_rate) for c in test_store.checkpoints]
    train = [(c.step, c.learning_rate) for c in train_store.checkpoints]
    if test != train:
        raise MethodError(
            f"test store {test_store.directory} has checkpoints (step, lr) {test} but train "
            f"store {train_store.directory} has {train}; extract both from the same checkpoints")
    if not test:
        raise MethodError(f"store {train_store.directory} has no checkpoints")
    return list(train_store.checkpoints)


# model_info entries that must agree between a test and a training store (the architecture).
_MODEL_KEYS = ("kind", "hf_dir", "vocab_size", "num_labels", "hidden_size", "num_hidden_layers", "embed_dim")


def check_same_model(test_store: GradientStore, train_store: GradientStore) -> None:
    """Both stores were computed from the same parameters: equal architecture (``model_info``)
    and, at every shared checkpoint, equal parameter fingerprints (when both recorded one).
    Scores between stores of two different models look plausible and are meaningless, so
    this is an error unless the caller asks for a cross-model study (``allow_mismatch``)."""
    infos = [s.manifest.get("model_info") or {} for s in (test_store, train_store)]
    differ = [k for k in _MODEL_KEYS if infos[0].get(k) != infos[1].get(k)]
    if differ:
        k = differ[0]
        raise MismatchError(
            f"test store {test_store.directory} and train store {train_store.directory} come from different "
            f"models: {k} is {infos[0].get(k)!r} vs {infos[1].get(k)!r}",
            "extract both from the same run, or pass --allow-mismatch for a deliberate cross-model study")
    train_fp = {c.step: getattr(c, "params_fingerprint", None) for c in train_store.checkpoints}
    for c in test_store.checkpoints:
        a, b = getattr(c, "params_fingerprint", None), train_fp.get(c.step)
        if a and b and a != b:
            raise MismatchError(
                f"test store {test_store.directory} and train store {train_store.directory} were computed "
                f"from different parameters at checkpoint {c.step} (fingerprints {a[:12]} vs {b[:12]})",
                "extract both from the same run's checkpoints, or pass --allow-mismatch for a deliberate "
                "cross-model study")


def store_k(store: GradientStore) -> int | None:
    return store.manifest.get("k")


class Method:
    """Base class: an influence method over gradient stores.

    A ``Method`` made by ``get_method`` holds only its options. ``prepare(test_store,
    train_store, context)`` returns a *bound* copy that also holds what it needs from the
    stores and the run (common-token lists, Hessians, TF-IDF matrices, the run context),
    set once when the copy is made; neither object changes afterwards. Scoring uses the
    bound copy; preparing a bound copy again for the same stores returns it unchanged.

    Subclasses set ``name``, ``fields`` (store fields to read) and implement
    ``score_block``; they may override ``_bind`` (validation, precomputation on the new
    copy), ``checkpoint_weights``, ``self_scores`` and, for word-level methods,
    ``token_contributions``.
    """

    name: str = "method"
    fields: tuple[str, ...] = ()
    decomposable: bool = False  # supports word-level decomposition
    final_checkpoint_only: bool = False  # influence functions, representer points

    _binding: tuple | None = None  # (test store, train store, context) of a bound copy

    def prepare(self, test_store: GradientStore, train_store: GradientStore,
                context: RunContext | None = None, *, allow_mismatch: bool = False) -> Method:
        """A copy of this method bound to the two stores and the run (class docstring).

        The stores must come from the same model (``check_same_model``) unless
        ``allow_mismatch``."""
        key = (str(test_store.directory), str(train_store.directory), id(context))
        if self._binding == key:
            return self
        if not allow_mismatch:
            check_same_model(test_store, train_store)
        bound = copy.copy(self)
        bound._bind(test_store, train_store, context)
        bound._binding = key
        return bound

    def _bind(self, test_store: GradientStore, train_store: GradientStore,
              context: RunContext | None) -> None:
        """Checks that the method can run on these stores; precomputes what it needs (on the
        fresh copy made by ``prepare``)."""
        shared_checkpoints(test_store, train_store)

    @property
    def bound(self) -> bool:
        return self._binding is not None

    def checkpoint_weights(self, test_store: GradientStore,
                           train_store: GradientStore) -> list[CheckpointWeight]:
        """``[(step, weight)]``: ``η_c`` for every checkpoint, or ``1.0`` at the last one."""
        ckpts = shared_checkpoints(test_store, train_store)
        if self.final_checkpoint_only:
            last = max(ckpts, key=lambda c: c.step)
            return [CheckpointWeight(last.step, 1.0)]
        return [CheckpointWeight(c.step, float(c.learning_rate)) for c in ckpts]

    def read_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(ALWAYS_FIELDS + tuple(self.fields)))

    def score_block(self, test: Block, train: Block, step: int,
                    mesh: Mesh | None = None) -> np.ndarray:
        """Per-checkpoint scores ``[M, N]`` float32 of test records against train records."""
        raise NotImplementedError

    def self_scores(self, block: Block, step: int, mesh: Mesh | None = None) -> np.ndarray:
        """Per-checkpoint ``score(x, x)`` ``[N]`` float32. Default: one row at a time."""
        out = np.zeros(len(block["position"]), np.float32)
        for i in range(len(out)):
            row = {k: v[i:i + 1] for k, v in block.items()}
            out[i] = self.score_block(row, row, step, mesh)[0, 0]
        return out

    def token_contributions(self, test_record: Block, train_record: Block,
                            step: int) -> tuple[np.ndarray, np.ndarray]:
        """Word-level decomposition of one pair at one checkpoint (``decomposable`` methods)."""
        raise MethodError(f"method {self.name!r} has no word-level decomposition")

    def describe(self) -> dict:
        """JSON-serialisable description (name and options) for outputs."""
        return {"name": self.name}


class ArrayMethod(Method):
    """A method whose per-checkpoint score is a pure JAX function of per-record arrays.

    ``inputs(block, step, side)`` selects/transforms the arrays of a block (leading
    axis = records); ``kernel(test_inputs, train_inputs) -> [M, N]`` is traced under
    ``jax.shard_map``: test inputs replicated, training records split over the
    mesh's ``data`` axis, so a block is scored by every device at once.
    """

    def inputs(self, block: Block, step: int, side: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def kernel(self, test: Mapping[str, jax.Array], train: Mapping[str, jax.Array]) -> jax.Array:
        raise NotImplementedError

    def score_block(self, test, train, step, mesh=None):
        return sharded_block_scores(self, self.kernel, self.inputs(test, step, "test"),
                                    self.inputs(train, step, "train"), mesh)

    def self_scores(self, block, step, mesh=None):
        inputs = self.inputs(block, step, "train")
        test_inputs = self.inputs(block, step, "test")

        def diagonal(test, train):  # vmap of the 1x1 kernel over records: no [N, N] matrix
            one = lambda a, b: self.kernel(jax.tree.map(lambda x: x[None], a),
                                           jax.tree.map(lambda x: x[None], b))[0, 0]
            return jax.vmap(one)(test, train)

        fn = _compiled(self, ("self",), lambda: jax.jit(diagonal))
        return np.asarray(fn(test_inputs, inputs), np.float32)


def _compiled(owner, key, build: Callable[[], Callable]) -> Callable:
    cache = owner.__dict__.setdefault("_compiled_cache", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def sharded_block_scores(owner, kernel, test_inputs: Mapping[str, np.ndarray],
                         train_inputs: Mapping[str, np.ndarray], mesh: Mesh | None,
                         pad_rows: int | None = None) -> np.ndarray:
    """``kernel(test, train) -> [M, N]`` with training rows split over ``mesh``'s ``data`` axis.

    Training arrays are zero-padded to a multiple of the (local) device count — padded
    rows are sliced off the result — and test arrays are replicated. ``mesh=None``
    uses this process's devices (``make_local_mesh``). Returns ``[M, N]`` float32 numpy.
    """
    mesh = mesh or mesh_lib.make_local_mesh()
    n = len(next(iter(train_inputs.values())))
    devices = len(mesh.local_devices)
    target = mesh_lib.pad_to_multiple(max(n, pad_rows or 0, 1), devices)
    padded = {k: np.pad(np.asarray(v), [(0, target - n)] + [(0, 0)] * (np.ndim(v) - 1))
              for k, v in train_inputs.items()}

    def build():
        sharded = jax.shard_map(kernel, mesh=mesh, in_specs=(P(), P(mesh_lib.DATA_AXIS)),
                                out_specs=P(None, mesh_lib.DATA_AXIS), check_vma=False)
        return jax.jit(sharded)

    fn = _compiled(owner, ("block", getattr(kernel, "__name__", id(kernel)), mesh), build)
    test = mesh_lib.replicate({k: np.asarray(v) for k, v in test_inputs.items()}, mesh)
    scores = fn(test, mesh_lib.shard_batch(padded, mesh))  # a local mesh: fully addressable
    return np.asarray(scores, np.float32)[:, :n]
