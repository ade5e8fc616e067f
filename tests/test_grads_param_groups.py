"""Parameter-group gradients from the same vmap(grad) pass as the word-embedding gradients.

``param_paths`` makes the gradient engine differentiate jointly w.r.t. the embedding
inputs and the chosen parameters. Checks: ``param_grads`` equals the separate pass
(``grads.param_grads.ParamGradients``) and per-example ``jax.grad`` of the loss; the
embedding gradients and side outputs are unchanged; chunked (micro-batches), sharded
(8 devices) and single-device results agree; the store path writes the field.
"""
from dataclasses import dataclass

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from tracin_jax import mesh as mesh_lib
from tracin_jax.grads import (extract_gradients, make_gradient_fn, make_single_device_gradient_fn,
                              per_example_outputs)
from tracin_jax.grads import embedding_grads
from tracin_jax.grads.param_grads import ParamGradients, group_paths, num_parameters

from test_grads import VOCAB, _setup

GROUPS = {"bert": (["word_embedding", "layer_1", "classifier"], True),
          "cnn": (["word_embedding", "conv_1", "classifier"], False)}


@dataclass
class _Encoded:  # the fields extract / ParamGradients read from an EncodedDataset
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def __len__(self):
        return len(self.labels)


def _encoded(batch):
    return _Encoded(**batch, ids=np.arange(100, 100 + len(batch["labels"])))


def _args(batch):
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"]


def _outputs(model, params, batch, **kwargs):
    """``per_example_outputs`` under jit (eager vmap(grad) is slow)."""
    fn = jax.jit(lambda p, *a: per_example_outputs(model, p, *a, **kwargs))
    return jax.device_get(fn(params, *_args(batch)))


def _reference(model, params, batch, paths):
    """Per-example jax.grad of the loss w.r.t. the whole parameter tree, then the paths."""
    @jax.jit
    @jax.grad
    def grad(p, ids, mask, types, label):
        out = model.apply({"params": p}, ids[None], mask[None], types[None])
        return optax.softmax_cross_entropy_with_integer_labels(out.logits[0], label)

    rows = []
    for row in range(len(batch["labels"])):
        flat = traverse_util.flatten_dict(grad(params, *(a[row] for a in _args(batch))))
        rows.append(np.concatenate([np.asarray(flat[p]).ravel() for p in paths]))
    return np.stack(rows)


@pytest.mark.parametrize("name", ["bert", "cnn"])
def test_same_pass_equals_separate_pass_and_per_example_grad(name):
    model, params, batch = _setup(name)
    groups, bias = GROUPS[name]
    paths = group_paths(params, groups, include_bias=bias)
    assert paths[0] == ("embeddings", "word_embeddings", "embedding")  # table gradient included
    out = _outputs(model, params, batch, param_paths=paths)
    got = np.asarray(out["param_grads"])
    assert got.shape == (len(batch["labels"]), num_parameters(params, paths))
    separate = ParamGradients(model, paths).grads(params, _encoded(batch), np.arange(len(batch["labels"])))
    np.testing.assert_allclose(got, separate, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got, _reference(model, params, batch, paths), rtol=1e-4, atol=1e-6)
    # The word-embedding outputs are unchanged by asking for parameter gradients.
    plain = _outputs(model, params, batch)
    assert set(out) == set(plain) | {"param_grads"}
    for key in plain:
        np.testing.assert_allclose(out[key], plain[key], rtol=1e-6, atol=1e-8, err_msg=key)


def test_chunked_sharded_and_single_device_records_agree():
    model, params, batch = _setup("bert")
    batch = {key: np.concatenate([v, v[::-1]]) for key, v in batch.items()}  # 16 rows / 8 devices
    paths = group_paths(params, ["layer_0", "pooler", "classifier"], include_bias=True)
    whole = jax.device_get(make_single_device_gradient_fn(model, k=4, param_paths=paths,
                                                          micro_batch=16)(params, batch))
    chunked = jax.device_get(make_single_device_gradient_fn(model, k=4, param_paths=paths,
                                                            micro_batch=2)(params, batch))
    mesh = mesh_lib.make_mesh()
    sharded = make_gradient_fn(model, mesh, k=4, param_paths=paths)(
        mesh_lib.replicate(params, mesh), mesh_lib.shard_batch(batch, mesh))
    plain = jax.device_get(make_single_device_gradient_fn(model, k=4)(params, batch))
    assert set(whole) == set(plain) | {"param_grads"}
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-5, atol=1e-7, err_msg=key)
        np.testing.assert_allclose(np.asarray(sharded[key]), whole[key], rtol=1e-5, atol=1e-7,
                                   err_msg=key)
        if key in plain:
            np.testing.assert_allclose(whole[key], plain[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_default_chunk_is_memory_bounded(monkeypatch):
    assert embedding_grads._param_chunk(16, 16, 10) == 16
    monkeypatch.setattr(embedding_grads, "PARAM_CHUNK_ELEMENTS", 3 * 1000)
    assert embedding_grads._param_chunk(16, 16, 1000) == 2  # cap 3 rows -> largest divisor of 16
    assert embedding_grads._param_chunk(16, 16, 10**6) == 1
    # The capped default gives the same numbers as one pass over the batch.
    model, params, batch = _setup("cnn")
    paths = group_paths(params, ["conv_0", "classifier"])
    monkeypatch.setattr(embedding_grads, "PARAM_CHUNK_ELEMENTS", 3 * num_parameters(params, paths))
    capped = _outputs(model, params, batch, param_paths=paths)
    whole = _outputs(model, params, batch, param_paths=paths, micro_batch=8)
    np.testing.assert_allclose(capped["param_grads"], whole["param_grads"], rtol=1e-5, atol=1e-7)


def test_param_paths_are_validated():
    model, params, batch = _setup("cnn")
    paths = group_paths(params, ["classifier"])
    with pytest.raises(ValueError, match="vmap"):
        per_example_outputs(model, params, *_args(batch), mode="sum", param_paths=paths)
    with pytest.raises(ValueError, match="group name"):
        make_single_device_gradient_fn(model, param_paths="classifier")
    with pytest.raises(ValueError, match="not parameters"):
        per_example_outputs(model, params, *_args(batch), param_paths=[("classifier", "nope")])
    with pytest.raises(ValueError, match="repeats"):
        make_single_device_gradient_fn(model, param_paths=paths + paths)


def test_store_gets_param_grads_field(tmp_path):
    model, params, batch = _setup("bert")
    paths = group_paths(params, ["pooler", "classifier"])
    encoded = _encoded(batch)
    params2 = jax.tree.map(lambda x: x * 1.1, params)
    store = extract_gradients(model, [(1, 0.1), (2, 0.05)], {1: params, 2: params2}.__getitem__,
                              encoded, tmp_path / "store", fingerprint="fp", split="train",
                              model_info={"kind": "bert"}, vocab_size=VOCAB, k=None, shard_size=3,
                              batch_size=4, progress=False, param_paths=paths)
    assert store.manifest["model_info"]["param_paths"] == ["/".join(p) for p in paths]
    assert store.fields["param_grads"] == ((num_parameters(params, paths),), "float32")
    engine = ParamGradients(model, paths)
    for step, p in ((1, params), (2, params2)):
        rec = store.load(step)
        np.testing.assert_array_equal(rec["example_id"], encoded.ids)
        np.testing.assert_allclose(rec["param_grads"], engine.grads(p, encoded, np.arange(8)),
                                   rtol=1e-5, atol=1e-7)
    # Without param_paths the same store layout as before (no extra field).
    plain = extract_gradients(model, [(1, 0.1)], {1: params}.__getitem__, encoded, tmp_path / "plain",
                              fingerprint="fp", split="train", model_info={"kind": "bert"},
                              vocab_size=VOCAB, k=None, shard_size=3, batch_size=4, progress=False)
    assert "param_grads" not in plain.fields and "param_paths" not in plain.manifest["model_info"]
    np.testing.assert_allclose(plain.load(1)["vectors"], store.load(1)["vectors"], rtol=1e-5, atol=1e-7)


def test_tracin_layer_reads_stored_param_grads_equal_to_recomputation(tmp_path):
    """A store extracted with param_paths is read by tracin_layer (no run needed); the scores,
    self-influence and rankings equal recomputing the gradients from the checkpoints."""
    from tracin_jax.methods import RunContext, get_method, score_matrix, self_influence
    from tracin_jax.methods.context import SplitData

    model, params, batch = _setup("bert")
    encoded = _encoded(batch)
    params2 = jax.tree.map(lambda x: x * 1.1, params)
    restore = {1: params, 2: params2}.__getitem__
    paths = group_paths(params, ["layer_1", "classifier"], include_bias=True)

    def store(name, rows, **kw):
        sub = _Encoded(**{f: getattr(encoded, f)[rows] for f in ("input_ids", "attention_mask",
                                                                   "token_type_ids", "labels", "ids")})
        return extract_gradients(model, [(1, 0.1), (2, 0.05)], restore, sub, tmp_path / name,
                                 fingerprint=name, split=name, model_info={"kind": "bert"},
                                 vocab_size=VOCAB, k=None, shard_size=3, batch_size=4, progress=False, **kw)

    test_rows, train_rows = np.arange(0, 3), np.arange(3, 8)
    stored = (store("test", test_rows, param_paths=paths), store("train", train_rows, param_paths=paths))
    plain = (store("test_plain", test_rows), store("train_plain", train_rows))

    class _Texts:  # what RunContext.split_for checks: the fingerprint and the size
        def __init__(self, name, n):
            self.name, self.n = name, n

        def fingerprint(self):
            return self.name

        def __len__(self):
            return self.n

    splits = {}
    for name, rows in (("test_plain", test_rows), ("train_plain", train_rows)):
        sub = _Encoded(**{f: getattr(encoded, f)[rows] for f in ("input_ids", "attention_mask",
                                                                   "token_type_ids", "labels", "ids")})
        splits[name] = SplitData(_Texts(name, len(rows)), sub)
    context = RunContext(model, restore, tokenizer=None, splits=splits)

    for name in ("tracin_layer[classifier]", "tracin_layer[layer_1]+bias", "tracin_layer[classifier,layer_1]"):
        method = get_method(name).prepare(*stored)
        assert method.describe()["source"] == "stored"  # without any run context
        got = score_matrix(name, *stored).scores
        want = score_matrix(name, *plain, context=context).scores
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
        _, self_got = self_influence(name, stored[1])
        _, self_want = self_influence(name, plain[1], context=context)
        np.testing.assert_allclose(self_got, self_want, rtol=2e-4, atol=1e-6)
    # Parameters the stores do not hold: recomputed, so the run is required.
    with pytest.raises(ValueError, match="needs the training run"):
        get_method("tracin_layer[pooler]").prepare(*stored)
