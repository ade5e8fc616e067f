"""Per-example gradients w.r.t. the word-embedding inputs, sharded over devices.

For example x with ids (x_1..x_L) and word embeddings e_i = E[x_i] (before
position/type embeddings), ``g_i = d loss(x) / d e_i`` (docs/method.md
"Word-embedding gradients"). Computed as ``jax.vmap(jax.grad(per_example_loss))`` over the batch
with parameters closed over: no weight-gradient work, only the backward pass
through activations. The batch is split over the mesh's ``data`` axis with
``jax.shard_map`` (pmap's successor): each device runs the vmapped gradient on its
rows; nothing is communicated.

One forward/backward yields everything the store records: per-token vectors
(segment sums, optionally top-k), the classifier input a(x), p - y, the loss, the
prediction and per-position gradient norms.

Parameter groups in the same pass: with ``param_paths`` (parameter paths, e.g.
``grads.param_grads.group_paths(params, ["layer_0", "classifier"])``) the same
``vmap(grad)`` differentiates jointly w.r.t. the word-embedding inputs and the
parameters at those paths (the others closed over), so ``∂ℓ(x)/∂W`` costs no second
forward/backward. The result ``param_grads [B, P]`` (float32, leaves in path order,
each flattened row-major: the layout of ``grads.param_grads``) equals, up to float
rounding, the separate pass ``ParamGradients.grads`` (tests/test_grads_param_groups.py). A group holding the word-embedding
table gets its full gradient (the lookup is inside the differentiated function).
Memory: the per-example gradients of one micro-batch (``micro_batch`` rows, the
chunk) are formed at a time, ``micro_batch · P`` floats; with ``param_paths`` the
default chunk is capped at ``PARAM_CHUNK_ELEMENTS // P`` rows. The returned
``[B, P]`` itself grows with the batch: pick the batch (or call per chunk of rows)
to fit. Requires ``mode="vmap"`` (the gradient of a summed loss is not per example).

Performance: on CPU the per-device batch is processed in micro-batches of about
``CPU_MICRO_BATCH_TOKENS`` tokens (``jax.lax.map``), so activations stay in cache;
this makes the whole step 1.5-1.9x faster than one [B, L] pass (tools/bench_grads.py).
Accelerators get the whole batch at once. Results equal the one-pass ones up to
float rounding.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.sharding import Mesh, PartitionSpec as P

from tracin_jax.kernels import position_norms, token_vectors_batch
from tracin_jax.models import check_token_ids, get_word_embedding_table
from tracin_jax.mesh import DATA_AXIS, local_rows
from tracin_jax.programs import PROGRAMS

BATCH_FIELDS = ("input_ids", "attention_mask", "token_type_ids", "labels")
# CPU micro-batch size in tokens (B_micro * L): 4 x 128 tokens keeps the largest
# activation of BERT L2-L12 within the caches; measured best of 128..4096 at width 256.
# Narrower models take proportionally more tokens (width 128: 1,024 tokens, 15% faster than
# 512 in tools/bench_peers.py's setup), wider ones keep 512.
CPU_MICRO_BATCH_TOKENS = 512
CPU_MICRO_BATCH_WIDTH = 256
# With parameter groups: at most this many per-example gradient floats per chunk
# (2**24 = 64 MiB in float32), the bound grads.param_grads uses.
PARAM_CHUNK_ELEMENTS = 2**24


def default_micro_batch(batch_size: int, seq_len: int, backend: str | None = None,
                        width: int | None = None) -> int:
    """Rows per micro-batch: all of them on accelerators; ~512 tokens on CPU, more for models
    narrower than 256 (``width``: the word-embedding dimension; 512 · 256 / width tokens).

    Always a divisor of ``batch_size`` so the batch splits evenly.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or batch_size <= 1:
        return max(batch_size, 1)
    tokens = CPU_MICRO_BATCH_TOKENS * max(1, CPU_MICRO_BATCH_WIDTH // max(int(width or CPU_MICRO_BATCH_WIDTH), 1))
    target = max(1, tokens // max(seq_len, 1))
    return max(d for d in range(1, min(target, batch_size) + 1) if batch_size % d == 0)


def _check_micro_batch(micro_batch) -> None:
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                    or micro_batch < 1):
        raise ValueError(f"micro_batch must be None or a positive int, got {micro_batch!r}")


def _param_chunk(batch_size: int, size: int, num_params: int) -> int:
    """Largest divisor of ``batch_size`` <= ``size`` keeping ``rows · num_params`` bounded."""
    cap = max(1, min(size, PARAM_CHUNK_ELEMENTS // max(num_params, 1)))
    return max(d for d in range(1, min(cap, batch_size) + 1) if batch_size % d == 0)


def _in_micro_batches(fn: Callable, arrays: dict, micro_batch: int | None, num_params: int = 0,
                      width: int | None = None):
    """``fn(arrays)`` computed ``micro_batch`` rows at a time (``lax.map``) and re-joined.

    ``fn`` maps a dict of [b, ...] arrays to a pytree of [b, ...] arrays, row by row
    independent. ``micro_batch`` must divide the batch; None = ``default_micro_batch``,
    capped by ``PARAM_CHUNK_ELEMENTS // num_params`` when parameter gradients are formed.
    """
    batch_size, seq_len = arrays["input_ids"].shape
    size = default_micro_batch(batch_size, seq_len, width=width) if micro_batch is None else micro_batch
    if micro_batch is None and num_params:
        size = _param_chunk(batch_size, size, num_params)
    if size >= batch_size:
        return fn(arrays)
    if batch_size % size:
        raise ValueError(f"micro_batch={size} does not divide the batch of {batch_size} rows")
    split = jax.tree.map(lambda x: x.reshape(batch_size // size, size, *x.shape[1:]), arrays)
    out = jax.lax.map(fn, split)
    return jax.tree.map(lambda x: x.reshape(batch_size, *x.shape[2:]), out)


def per_example_outputs(model, params, input_ids, attention_mask, token_type_ids, labels, *,
                        mode: str = "vmap", micro_batch: int | None = None, param_paths=None):
    """Position gradients and side outputs for one (local) batch.

    Args: ``input_ids, attention_mask, token_type_ids: [B, L]``, ``labels: [B]``.
    Returns dict with ``position_grads [B, L, D]`` (float32, zero at pad positions),
    ``features [B, H]``, ``logits [B, C]``, ``loss [B]``, and with ``param_paths``
    also ``param_grads [B, P]`` (per-example ``∂ℓ/∂W`` of those parameters, same pass;
    see the module docstring).
    ``mode="vmap"``: vmap(grad(per-example loss)); ``mode="sum"``: grad of the summed
    loss w.r.t. the batched embeddings. They are equal because examples do not
    interact (no batch norm; a test checks it).
    ``micro_batch``: rows per ``lax.map`` step (a divisor of B), the chunk; None picks
    ``default_micro_batch`` (whole batch on accelerators, ~512 tokens on CPU), capped
    to ``PARAM_CHUNK_ELEMENTS // P`` rows with ``param_paths``.
    """
    paths = _check_args(mode, micro_batch, param_paths)
    _check_ids(params, input_ids)
    arrays = dict(zip(BATCH_FIELDS, (input_ids, attention_mask, token_type_ids, labels)))
    return _in_micro_batches(lambda b: _outputs(model, params, b, mode, paths), arrays, micro_batch,
                             _num_params(params, paths), _width(params))


def _check_ids(params, input_ids) -> None:
    """Host-side id check at every public entry (concrete ids only: inside ``jit`` the model's
    ``lookup_words`` turns an out-of-table id into NaN, which the callers refuse)."""
    if isinstance(input_ids, jax.core.Tracer):
        return
    if not getattr(input_ids, "is_fully_addressable", True):  # multi-host: this host's rows
        input_ids = local_rows(input_ids)
    check_token_ids(input_ids, int(get_word_embedding_table(params).shape[0]))


def _checked(fn):
    """``fn(params, batch)`` with the batch's token ids checked on the host first (cost: one
    comparison per id, measured in tools/bench_grads.py as ``id_check_s``)."""
    def call(params, batch):
        _check_ids(params, batch["input_ids"])
        return fn(params, batch)
    call.__wrapped__ = fn
    return call


def _num_params(params, paths) -> int:
    if not paths:
        return 0
    flat = traverse_util.flatten_dict(params)
    unknown = [p for p in paths if p not in flat]
    if unknown:
        raise ValueError(f"param_paths {unknown} are not parameters of the model")
    return int(sum(flat[p].size for p in paths))


def _outputs(model, params, batch, mode, param_paths=None):
    """``per_example_outputs`` of one micro-batch (no splitting)."""
    if param_paths:
        return _outputs_with_params(model, params, batch, param_paths)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    token_type_ids, labels = batch["token_type_ids"], batch["labels"]
    embeds = model.apply({"params": params}, input_ids, method="embed_words")

    def forward(e, m, t):
        out = model.apply({"params": params}, None, m, t, inputs_embeds=e, deterministic=True)
        return out.logits.astype(jnp.float32), out.features.astype(jnp.float32)

    if mode == "vmap":
        def one(e, m, t, y):
            logits, feats = forward(e[None], m[None], t[None])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits[0], y)
            return loss, (feats[0], logits[0])

        (loss, (features, logits)), grads = jax.vmap(jax.value_and_grad(one, has_aux=True))(
            embeds, attention_mask, token_type_ids, labels)
    else:  # "sum"
        def total(e):
            logits, feats = forward(e, attention_mask, token_type_ids)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return losses.sum(), (losses, feats, logits)

        (_, (loss, features, logits)), grads = jax.value_and_grad(total, has_aux=True)(embeds)
    grads = grads.astype(jnp.float32) * attention_mask[..., None].astype(jnp.float32)
    return {"position_grads": grads, "features": features, "logits": logits, "loss": loss}


def _outputs_with_params(model, params, batch, param_paths):
    """``_outputs`` (vmap mode) that also returns ``param_grads [b, P]`` from the same grad.

    Differentiates ``ℓ(x)`` jointly w.r.t. ``(δ, W)``, where the word embeddings are
    ``e = E[x] + δ`` at ``δ = 0`` (so ``∂ℓ/∂δ = ∂ℓ/∂e`` exactly, and a table ``E`` in
    ``W`` also gets the gradient through its lookup) and ``W`` = the parameters at
    ``param_paths``; the other parameters are closed over.
    """
    flat = traverse_util.flatten_dict(params)
    chosen = [flat[p] for p in param_paths]
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    embeds_shape = jax.eval_shape(
        lambda ids: model.apply({"params": params}, ids, method="embed_words"), input_ids[:1])

    def one(delta, weights, ids, m, t, y):
        full = dict(flat)
        full.update(zip(param_paths, weights))
        variables = {"params": traverse_util.unflatten_dict(full)}
        e = model.apply(variables, ids[None], method="embed_words") + delta[None]
        out = model.apply(variables, None, m[None], t[None], inputs_embeds=e, deterministic=True)
        logits = out.logits.astype(jnp.float32)[0]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return loss, (out.features.astype(jnp.float32)[0], logits)

    delta = jnp.zeros(embeds_shape.shape[1:], embeds_shape.dtype)
    (loss, (features, logits)), (grads, wgrads) = jax.vmap(
        jax.value_and_grad(one, argnums=(0, 1), has_aux=True), in_axes=(None, None, 0, 0, 0, 0))(
        delta, chosen, input_ids, attention_mask, batch["token_type_ids"], batch["labels"])
    grads = grads.astype(jnp.float32) * attention_mask[..., None].astype(jnp.float32)
    param_grads = jnp.concatenate(
        [g.reshape(g.shape[0], -1).astype(jnp.float32) for g in wgrads], axis=1)
    return {"position_grads": grads, "features": features, "logits": logits, "loss": loss,
            "param_grads": param_grads}


def _token_vectors(input_ids, grads, mask, k, topk_by):
    """``token_vectors_batch``, with eq. 5 computed on the k kept positions only.

    For ``topk_by="position"`` the kept positions are the k largest ``‖g_i‖`` among
    real tokens, ties by lower position (``lax.top_k`` keeps the lower index first,
    pads rank last); merging just those k rows, in position order, gives exactly
    ``token_vectors_batch(..., k)`` without the [L, L] merge over every position.
    """
    length = input_ids.shape[-1]
    if k is None or topk_by != "position" or k >= length:
        return token_vectors_batch(input_ids, grads, mask, k=k, topk_by=topk_by)
    key = jnp.where(mask, position_norms(grads, mask), -1.0)  # norms >= 0: pads last
    kept = jnp.sort(jax.lax.top_k(key, k)[1], axis=-1)  # [B, k] positions, ascending
    take = partial(jnp.take_along_axis, axis=1)
    return token_vectors_batch(take(input_ids, kept), take(grads, kept[..., None]),
                               take(mask, kept), k=None)


def _records(model, params, batch, *, k, topk_by, mode, keep_position_grads, micro_batch,
             param_paths=None):
    arrays = {f: batch[f] for f in BATCH_FIELDS}
    body = partial(_micro_batch_records, model, params, k=k, topk_by=topk_by, mode=mode,
                   keep_position_grads=keep_position_grads, param_paths=param_paths)
    return _in_micro_batches(body, arrays, micro_batch, _num_params(params, param_paths), _width(params))


def _width(params) -> int:
    """The word-embedding dimension D (sizes the CPU micro-batch)."""
    return int(get_word_embedding_table(params).shape[-1])


def _micro_batch_records(model, params, batch, *, k, topk_by, mode, keep_position_grads,
                         param_paths=None):
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    out = _outputs(model, params, batch, mode, param_paths)
    grads = out["position_grads"]
    probs = jax.nn.softmax(out["logits"], axis=-1)
    onehot = jax.nn.one_hot(batch["labels"], probs.shape[-1], dtype=probs.dtype)
    token_ids, vectors = _token_vectors(input_ids, grads, mask.astype(bool), k, topk_by)
    rec = {
        "token_ids": token_ids,
        "vectors": vectors,
        "features": out["features"],
        "p_minus_y": probs - onehot,
        "loss": out["loss"],
        "prediction": jnp.argmax(probs, -1).astype(jnp.int32),
        "position_norms": position_norms(grads, mask.astype(bool)),
    }
    if keep_position_grads:
        rec["position_grads"] = grads
    if param_paths:
        rec["param_grads"] = out["param_grads"]
    return rec


def make_gradient_fn(model, mesh: Mesh, *, k: int | None = None, topk_by: str = "position",
                     mode: str = "vmap", keep_position_grads: bool = False,
                     micro_batch: int | None = None, param_paths=None) -> Callable:
    """Jitted ``(params, batch) -> records``; ``batch`` sharded over ``mesh`` (see ``shard_batch``).

    ``records`` are batch-sharded arrays: ``token_ids [B, T]`` (-1 padded),
    ``vectors [B, T, D]`` (per-token sums, top-k positions if ``k``), ``features [B, H]``,
    ``p_minus_y [B, C]``, ``loss [B]``, ``prediction [B]``, ``position_norms [B, L]``
    and, if asked, ``position_grads [B, L, D]``. ``micro_batch``: rows per step (the
    chunk) of each device's share (see ``per_example_outputs``). ``param_paths``:
    parameter paths whose per-example gradients come from the same pass, as
    ``param_grads [B, P]`` (module docstring; needs ``mode="vmap"``).
    """
    paths = _check_args(mode, micro_batch, param_paths)
    key = ("gradients", model, mesh, k, topk_by, mode, keep_position_grads, micro_batch, paths)

    def build():
        body = partial(_records, model, k=k, topk_by=topk_by, mode=mode,
                       keep_position_grads=keep_position_grads, micro_batch=micro_batch,
                       param_paths=paths)

        def per_shard(params, batch):
            return body(params, batch)

        sharded = jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                                out_specs=P(DATA_AXIS), check_vma=False)
        return _checked(jax.jit(sharded))

    # One program per model and options for the process (programs.PROGRAMS): a notebook, or
    # grads over several splits, traces and compiles it once. Models are frozen dataclasses,
    # equal when their configurations are; parameters are arguments, never part of the key.
    try:
        hash(key)
    except TypeError:  # a model that is not hashable: built anew
        return build()
    return PROGRAMS.get(key, build)


def make_single_device_gradient_fn(model, *, k: int | None = None, topk_by: str = "position",
                                   mode: str = "vmap", keep_position_grads: bool = False,
                                   micro_batch: int | None = None, param_paths=None) -> Callable:
    """The unsharded twin of :func:`make_gradient_fn` (reference for tests)."""
    paths = _check_args(mode, micro_batch, param_paths)
    return _checked(jax.jit(partial(_records, model, k=k, topk_by=topk_by, mode=mode,
                                    keep_position_grads=keep_position_grads, micro_batch=micro_batch,
                                    param_paths=paths)))


def _check_args(mode, micro_batch, param_paths=None) -> tuple[tuple[str, ...], ...] | None:
    """Validates the options; returns ``param_paths`` as a tuple of tuples (or None)."""
    if mode not in ("vmap", "sum"):
        raise ValueError(f"mode={mode!r}; expected 'vmap' or 'sum'")
    _check_micro_batch(micro_batch)
    if param_paths is None:
        return None
    if isinstance(param_paths, str):
        raise ValueError("param_paths are parameter paths (tuples of names), not a group name; "
                         "use grads.param_grads.group_paths(params, groups)")
    paths = tuple(tuple(p) for p in param_paths)
    if not paths or len(set(paths)) != len(paths):
        raise ValueError(f"param_paths must be non-empty and without repeats, got {paths}")
    if mode != "vmap":
        raise ValueError("param_paths need mode='vmap': the gradient of a summed loss w.r.t. "
                         "parameters is not per example")
    return paths
