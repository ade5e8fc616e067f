"""Per-example gradients w.r.t. the word-embedding inputs, sharded over devices.

For example x with ids (x_1..x_L) and word embeddings e_i = E[x_i] (before
position/type embeddings), ``g_i = d loss(x) / d e_i`` (SPEC "Word-embedding
gradients"). Computed as ``jax.vmap(jax.grad(per_example_loss))`` over the batch
with parameters closed over: no weight-gradient work, only the backward pass
through activations. The batch is split over the mesh's ``data`` axis with
``jax.shard_map`` (pmap's successor): each device runs the vmapped gradient on its
rows; nothing is communicated.

One forward/backward yields everything the store records: per-token vectors
(segment sums, optionally top-k), the classifier input a(x), p - y, the loss, the
prediction and per-position gradient norms.

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
from jax.sharding import Mesh, PartitionSpec as P

from tracin_jax.kernels import position_norms, token_vectors_batch
from tracin_jax.mesh import DATA_AXIS

BATCH_FIELDS = ("input_ids", "attention_mask", "token_type_ids", "labels")
# CPU micro-batch size in tokens (B_micro * L): 4 x 128 tokens keeps the largest
# activation of BERT L2-L12 within the caches; measured best of 128..4096.
CPU_MICRO_BATCH_TOKENS = 512


def default_micro_batch(batch_size: int, seq_len: int, backend: str | None = None) -> int:
    """Rows per micro-batch: all of them on accelerators; ~512 tokens on CPU.

    Always a divisor of ``batch_size`` so the batch splits evenly.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or batch_size <= 1:
        return max(batch_size, 1)
    target = max(1, CPU_MICRO_BATCH_TOKENS // max(seq_len, 1))
    return max(d for d in range(1, min(target, batch_size) + 1) if batch_size % d == 0)


def _check_micro_batch(micro_batch) -> None:
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                    or micro_batch < 1):
        raise ValueError(f"micro_batch must be None or a positive int, got {micro_batch!r}")


def _in_micro_batches(fn: Callable, arrays: dict, micro_batch: int | None):
    """``fn(arrays)`` computed ``micro_batch`` rows at a time (``lax.map``) and re-joined.

    ``fn`` maps a dict of [b, ...] arrays to a pytree of [b, ...] arrays, row by row
    independent. ``micro_batch`` must divide the batch; None = ``default_micro_batch``.
    """
    batch_size, seq_len = arrays["input_ids"].shape
    size = default_micro_batch(batch_size, seq_len) if micro_batch is None else micro_batch
    if size >= batch_size:
        return fn(arrays)
    if batch_size % size:
        raise ValueError(f"micro_batch={size} does not divide the batch of {batch_size} rows")
    split = jax.tree.map(lambda x: x.reshape(batch_size // size, size, *x.shape[1:]), arrays)
    out = jax.lax.map(fn, split)
    return jax.tree.map(lambda x: x.reshape(batch_size, *x.shape[2:]), out)


def per_example_outputs(model, params, input_ids, attention_mask, token_type_ids, labels, *,
                        mode: str = "vmap", micro_batch: int | None = None):
    """Position gradients and side outputs for one (local) batch.

    Args: ``input_ids, attention_mask, token_type_ids: [B, L]``, ``labels: [B]``.
    Returns dict with ``position_grads [B, L, D]`` (float32, zero at pad positions),
    ``features [B, H]``, ``logits [B, C]``, ``loss [B]``.
    ``mode="vmap"``: vmap(grad(per-example loss)); ``mode="sum"``: grad of the summed
    loss w.r.t. the batched embeddings. They are equal because examples do not
    interact (no batch norm; a test checks it).
    ``micro_batch``: rows per ``lax.map`` step (a divisor of B); None picks
    ``default_micro_batch`` (whole batch on accelerators, ~512 tokens on CPU).
    """
    _check_args(mode, micro_batch)
    arrays = dict(zip(BATCH_FIELDS, (input_ids, attention_mask, token_type_ids, labels)))
    return _in_micro_batches(lambda b: _outputs(model, params, b, mode), arrays, micro_batch)


def _outputs(model, params, batch, mode):
    """``per_example_outputs`` of one micro-batch (no splitting)."""
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


def _records(model, params, batch, *, k, topk_by, mode, keep_position_grads, micro_batch):
    arrays = {f: batch[f] for f in BATCH_FIELDS}
    body = partial(_micro_batch_records, model, params, k=k, topk_by=topk_by, mode=mode,
                   keep_position_grads=keep_position_grads)
    return _in_micro_batches(body, arrays, micro_batch)


def _micro_batch_records(model, params, batch, *, k, topk_by, mode, keep_position_grads):
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    out = _outputs(model, params, batch, mode)
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
    return rec


def make_gradient_fn(model, mesh: Mesh, *, k: int | None = None, topk_by: str = "position",
                     mode: str = "vmap", keep_position_grads: bool = False,
                     micro_batch: int | None = None) -> Callable:
    """Jitted ``(params, batch) -> records``; ``batch`` sharded over ``mesh`` (see ``shard_batch``).

    ``records`` are batch-sharded arrays: ``token_ids [B, T]`` (-1 padded),
    ``vectors [B, T, D]`` (per-token sums, top-k positions if ``k``), ``features [B, H]``,
    ``p_minus_y [B, C]``, ``loss [B]``, ``prediction [B]``, ``position_norms [B, L]``
    and, if asked, ``position_grads [B, L, D]``. ``micro_batch``: rows per step of each
    device's share (see ``per_example_outputs``).
    """
    _check_args(mode, micro_batch)
    body = partial(_records, model, k=k, topk_by=topk_by, mode=mode,
                   keep_position_grads=keep_position_grads, micro_batch=micro_batch)

    def per_shard(params, batch):
        return body(params, batch)

    sharded = jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                            out_specs=P(DATA_AXIS), check_vma=False)
    return jax.jit(sharded)


def make_single_device_gradient_fn(model, *, k: int | None = None, topk_by: str = "position",
                                   mode: str = "vmap", keep_position_grads: bool = False,
                                   micro_batch: int | None = None) -> Callable:
    """The unsharded twin of :func:`make_gradient_fn` (reference for tests)."""
    _check_args(mode, micro_batch)
    return jax.jit(partial(_records, model, k=k, topk_by=topk_by, mode=mode,
                           keep_position_grads=keep_position_grads, micro_batch=micro_batch))


def _check_args(mode, micro_batch) -> None:
    if mode not in ("vmap", "sum"):
        raise ValueError(f"mode={mode!r}; expected 'vmap' or 'sum'")
    _check_micro_batch(micro_batch)
