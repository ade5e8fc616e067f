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


def per_example_outputs(model, params, input_ids, attention_mask, token_type_ids, labels, *,
                        mode: str = "vmap"):
    """Position gradients and side outputs for one (local) batch.

    Args: ``input_ids, attention_mask, token_type_ids: [B, L]``, ``labels: [B]``.
    Returns dict with ``position_grads [B, L, D]`` (float32, zero at pad positions),
    ``features [B, H]``, ``logits [B, C]``, ``loss [B]``.
    ``mode="vmap"``: vmap(grad(per-example loss)); ``mode="sum"``: grad of the summed
    loss w.r.t. the batched embeddings. They are equal because examples do not
    interact (no batch norm; a test checks it).
    """
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
    elif mode == "sum":
        def total(e):
            logits, feats = forward(e, attention_mask, token_type_ids)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return losses.sum(), (losses, feats, logits)

        (_, (loss, features, logits)), grads = jax.value_and_grad(total, has_aux=True)(embeds)
    else:
        raise ValueError(f"mode={mode!r}; expected 'vmap' or 'sum'")
    grads = grads.astype(jnp.float32) * attention_mask[..., None].astype(jnp.float32)
    return {"position_grads": grads, "features": features, "logits": logits, "loss": loss}


def _records(model, params, batch, *, k, topk_by, mode, keep_position_grads):
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    out = per_example_outputs(model, params, input_ids, mask, batch["token_type_ids"],
                              batch["labels"], mode=mode)
    grads = out["position_grads"]
    probs = jax.nn.softmax(out["logits"], axis=-1)
    onehot = jax.nn.one_hot(batch["labels"], probs.shape[-1], dtype=probs.dtype)
    token_ids, vectors = token_vectors_batch(input_ids, grads, mask.astype(bool), k=k, topk_by=topk_by)
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
                     mode: str = "vmap", keep_position_grads: bool = False) -> Callable:
    """Jitted ``(params, batch) -> records``; ``batch`` sharded over ``mesh`` (see ``shard_batch``).

    ``records`` are batch-sharded arrays: ``token_ids [B, T]`` (-1 padded),
    ``vectors [B, T, D]`` (per-token sums, top-k positions if ``k``), ``features [B, H]``,
    ``p_minus_y [B, C]``, ``loss [B]``, ``prediction [B]``, ``position_norms [B, L]``
    and, if asked, ``position_grads [B, L, D]``.
    """
    body = partial(_records, model, k=k, topk_by=topk_by, mode=mode,
                   keep_position_grads=keep_position_grads)

    def per_shard(params, batch):
        return body(params, batch)

    sharded = jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                            out_specs=P(DATA_AXIS), check_vma=False)
    return jax.jit(sharded)


def make_single_device_gradient_fn(model, **kwargs) -> Callable:
    """The unsharded twin of :func:`make_gradient_fn` (reference for tests)."""
    return jax.jit(partial(_records, model, k=kwargs.get("k"), topk_by=kwargs.get("topk_by", "position"),
                           mode=kwargs.get("mode", "vmap"),
                           keep_position_grads=kwargs.get("keep_position_grads", False)))
