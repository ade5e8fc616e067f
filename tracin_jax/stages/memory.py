"""``tracin_jax.influence``: scores for a Flax model and its checkpoints, in memory.

For notebooks and small sets: no run directory and no store on disk. The gradient engine
computes the same records ``tracin-jax grads`` writes, held in ``store.MemoryStore``, and
the same methods and kernels score them, so the numbers equal the store path's (tested).

    from tracin_jax import influence
    scores = influence("tracin_we", model, [(params_1, 1e-3), (params_2, 5e-4)],
                       train={"input_ids": ids, "attention_mask": mask, "labels": y}, test=...)
    scores.scores            # [M, N] float32, score > 0 = proponent
    top = influence("tracin_we_topk", model, checkpoints, train, test, top=10)
    top.proponents.ids       # [M, 10]

``model`` is any Flax module with this package's calling convention:
``model.apply({"params": p}, ids, mask, types, inputs_embeds=None, deterministic=True)``
returning ``(logits, features)`` and ``model.apply({"params": p}, ids, method="embed_words")``
(``BertClassifier``, ``CNNClassifier``, or your own module written that way).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from tracin_jax import mesh as mesh_lib
from tracin_jax.data import EncodedDataset, TextDataset, encode_dataset
from tracin_jax.errors import UsageError
from tracin_jax.files import tree_fingerprint, tree_sha256
from tracin_jax.grads import compute_records, make_gradient_fn
from tracin_jax.grads.extract import trim_multiple
from tracin_jax.methods import RunContext, SplitData, get_method, score_matrix, top_k
from tracin_jax.methods.retrieval import ScoreMatrix
from tracin_jax.models import check_token_ids, get_word_embedding_table
from tracin_jax.rankings import Rankings
from tracin_jax.store import CheckpointInfo
from tracin_jax.store.memory import MemoryStore

# Top-k positions per example (docs/method.md, eq. 5) when the method works on top-k vectors.
DEFAULT_TOPK = 10
_EXACT = ("tracin_we", "tracin_we_noc", "tracin_common")


@dataclasses.dataclass(frozen=True)
class _Examples:
    """An ``EncodedDataset``'s arrays (what the gradient engine reads)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _examples(data, tokenizer, max_length: int, pad_id: int, what: str):
    """``(encoded, texts or None)`` from an EncodedDataset, a TextDataset (with ``tokenizer``) or
    a dict of arrays ``input_ids [N, L]``, ``labels [N]`` (+ ``attention_mask``, ``token_type_ids``,
    ``ids``)."""
    if isinstance(data, TextDataset):
        if tokenizer is None:
            raise UsageError(f"{what} is text: pass tokenizer=...")
        return encode_dataset(data, tokenizer, max_length), data
    if isinstance(data, EncodedDataset):
        enc = data
    elif isinstance(data, Mapping):
        if "input_ids" not in data or "labels" not in data:
            raise UsageError(f"{what} needs 'input_ids' [N, L] and 'labels' [N], got keys {sorted(data)}")
        ids = np.asarray(data["input_ids"])
        if ids.ndim != 2:
            raise UsageError(f"{what}['input_ids'] must be [N, L], got shape {ids.shape}")
        mask = np.asarray(data.get("attention_mask", ids != pad_id), np.int32)
        enc = _Examples(ids.astype(np.int32), mask, np.asarray(data.get("token_type_ids", np.zeros_like(ids)), np.int32),
                        np.asarray(data["labels"], np.int32).reshape(-1),
                        np.asarray(data.get("ids", np.arange(len(ids))), np.int64).reshape(-1))
        if not (enc.attention_mask.shape == enc.token_type_ids.shape == ids.shape and len(enc.labels) == len(ids)
                == len(enc.ids)):
            raise UsageError(f"{what}: input_ids {ids.shape}, attention_mask {enc.attention_mask.shape}, "
                             f"token_type_ids {enc.token_type_ids.shape}, labels {enc.labels.shape} and ids "
                             f"{enc.ids.shape} disagree")
    else:
        raise UsageError(f"{what} must be a dict of arrays, an EncodedDataset or a TextDataset, not "
                         f"{type(data).__name__}")
    return enc, None


def influence(method: str, model, checkpoints: Sequence[tuple], train, test, *, top: int | None = None,
              k: int | None | str = "auto", topk_by: str = "position", options: dict | None = None,
              tokenizer=None, max_length: int | None = None, label_names: Sequence[str] | None = None,
              batch_size: int = 32, shard_size: int = 1024, mesh=None) -> ScoreMatrix | Rankings:
    """Scores of every test example against every training example (``top=None``: a dense
    ``ScoreMatrix``), or each test example's ``top`` proponents and opponents (``Rankings``).

    Args:
      method: a registry name (``tracin_we``, ``tracin_we_topk``, ``tracin_last``,
        ``influence_last``, ``representer``, ``tracin_layer[...]``, ...; docs/method.md).
      model: a Flax module (module docstring).
      checkpoints: ``[(params, learning_rate), ...]`` or ``[(step, params, learning_rate), ...]``.
      train, test: dicts of arrays (``input_ids [N, L]``, ``labels [N]``, optional
        ``attention_mask``, ``token_type_ids``, ``ids``), ``EncodedDataset`` or ``TextDataset``.
      k: top-k positions of the per-token vectors ("auto": 10 for tracin_we_topk /
        tracin_we_syn, exact otherwise).
      tokenizer: needed for text inputs and for decoding; its special ids feed
        tracin_common / tracin_we_noc. max_length: tokens per text (default the tokenizer's).
      label_names: class names (default ``"0".."C-1"``).
      batch_size / shard_size: examples per gradient step / per scored block (as ``grads``:
        the same shard size as a store gives bit-identical scores and rankings).
    """
    if not checkpoints:
        raise UsageError("no checkpoints given", "pass [(params, learning_rate), ...]")
    entries = [(i + 1, c[0], c[1]) if len(c) == 2 else tuple(c) for i, c in enumerate(checkpoints)]
    name = str(method)
    if k == "auto":
        k = DEFAULT_TOPK if name.startswith(("tracin_we_topk", "tracin_we_syn")) else None
    options = dict(options or {})
    if name == "tracin_we_topk" and k is not None:
        options.setdefault("k", int(k))
    mesh = mesh or mesh_lib.make_local_mesh()
    vocab = int(get_word_embedding_table(entries[0][1]).shape[0])
    pad_id = int(getattr(tokenizer, "pad_id", 0))
    max_length = int(max_length or getattr(tokenizer, "max_length", 128))
    first_params = entries[0][1]
    encoded, texts = {}, {}
    for what, data in (("train", train), ("test", test)):
        enc, txt = _examples(data, tokenizer, max_length, pad_id, what)
        check_token_ids(np.asarray(enc.input_ids), vocab)
        encoded[what], texts[what] = enc, txt
    if not label_names:  # the model's classes
        given = [t for t in texts.values() if t is not None]
        if given:
            label_names = given[0].label_names
        else:
            probe = encoded["test"]
            logits = model.apply({"params": first_params}, np.asarray(probe.input_ids[:1]),
                                 np.asarray(probe.attention_mask[:1]), np.asarray(probe.token_type_ids[:1]),
                                 deterministic=True)[0]
            label_names = tuple(str(i) for i in range(int(np.shape(logits)[-1])))
    for what, enc in encoded.items():  # what a store records about its examples (ids, labels)
        if texts[what] is None:
            texts[what] = TextDataset(texts=("",) * len(enc.labels), text_pairs=None, labels=np.asarray(enc.labels),
                                      ids=np.asarray(enc.ids), label_names=tuple(label_names), name=what)
    grad_fn = make_gradient_fn(model, mesh, k=k, topk_by=topk_by)
    batch_size = mesh_lib.pad_to_multiple(int(batch_size), mesh.size)
    infos = [CheckpointInfo(int(step), float(lr), tree_fingerprint(tree_sha256(params)))
             for step, params, lr in entries]
    stores = {}
    for what in ("train", "test"):
        enc = encoded[what]
        records = {}
        for (step, params, _), info in zip(entries, infos):
            replicated = mesh_lib.replicate(params, mesh)
            records[int(step)] = compute_records(
                grad_fn, replicated, enc, np.arange(len(enc.labels)), batch_size, mesh, k=k,
                pad_to_multiple=trim_multiple(None, int(np.shape(enc.input_ids)[1])))
        stores[what] = MemoryStore(records, infos, k=k, split=what, fingerprint=texts[what].fingerprint(),
                                   model_info={"kind": type(model).__name__, "vocab_size": vocab}, name=what,
                                   shard_size=shard_size)
    params_of = {int(step): params for step, params, _ in entries}
    context = RunContext(model, params_of.__getitem__, tokenizer,
                         splits={w: SplitData(texts[w], encoded[w]) for w in ("train", "test")})
    bound = get_method(name, **options).prepare(stores["test"], stores["train"], context)
    if top is None:
        return score_matrix(bound, stores["test"], stores["train"], context=context, mesh=mesh)
    return top_k(bound, stores["test"], stores["train"], int(top), context=context, mesh=mesh)


__all__ = ["influence"]
