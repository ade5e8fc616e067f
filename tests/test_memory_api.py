"""``tracin_jax.influence``: in memory, the same numbers as the gradient-store path."""
from __future__ import annotations

import numpy as np
import pytest

import tracin_jax
from tracin_jax.errors import DataError, UsageError
from tracin_jax.methods import score_matrix, top_k

from methods_world import CHECKPOINTS, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("memory"))


def _checkpoints(world):
    return [(step, world.params[step], lr) for step, lr in CHECKPOINTS]


@pytest.mark.parametrize("method,k", [("tracin_we", None), ("tracin_we_topk", 4), ("tracin_last", None),
                                      ("influence_last", None), ("tracin_layer[classifier]", None)])
def test_influence_equals_the_store_path(world, method, k):
    options = {"k": k} if method == "tracin_we_topk" else {}
    want = score_matrix(method, world.stores["test", k], world.stores["train", k], context=world.context,
                        options=options)
    got = tracin_jax.influence(method, world.model, _checkpoints(world), world.train.encoded, world.test.encoded,
                               k=k, tokenizer=world.tokenizer, label_names=world.train.texts.label_names)
    np.testing.assert_array_equal(got.test_ids, want.test_ids)
    np.testing.assert_array_equal(got.train_ids, want.train_ids)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-7 * np.abs(want.scores).max())


def test_top_k_from_arrays_and_text(world):
    """Plain dicts of arrays (the notebook path) and text with a tokenizer give the store's rankings."""
    enc = world.train.encoded
    as_arrays = lambda e: {"input_ids": e.input_ids, "attention_mask": e.attention_mask, "labels": e.labels,
                           "ids": e.ids}
    got = tracin_jax.influence("tracin_we_topk", world.model, _checkpoints(world), as_arrays(enc),
                               as_arrays(world.test.encoded), top=5, k=4, shard_size=16,
                               batch_size=8)  # the stores' batches and shards: bit-identical
    want = top_k("tracin_we_topk", world.stores["test", 4], world.stores["train", 4], 5, options={"k": 4})
    np.testing.assert_array_equal(got.proponents.ids, want.proponents.ids)
    np.testing.assert_array_equal(got.opponents.ids, want.opponents.ids)
    from_text = tracin_jax.influence("tracin_we", world.model, _checkpoints(world), world.train.texts,
                                     world.test.texts, tokenizer=world.tokenizer)
    np.testing.assert_allclose(from_text.scores, score_matrix("tracin_we", world.stores["test", None],
                                                              world.stores["train", None]).scores, rtol=1e-5)


def test_bad_inputs(world):
    enc = world.train.encoded
    with pytest.raises(UsageError, match="no checkpoints"):
        tracin_jax.influence("tracin_we", world.model, [], enc, enc)
    bad = {"input_ids": np.full((2, 5), 10_000), "labels": np.zeros(2)}
    with pytest.raises(DataError, match="token id 10000 at row 0"):
        tracin_jax.influence("tracin_we", world.model, _checkpoints(world), bad, bad)
    with pytest.raises(UsageError, match="text: pass tokenizer"):
        tracin_jax.influence("tracin_we", world.model, _checkpoints(world), world.train.texts, world.test.texts)
