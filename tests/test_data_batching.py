"""Batching: deterministic shuffles, exact removal with `keep`, padded last batch."""
import numpy as np
import pytest

from tracin_jax.data import EncodedDataset, batch_order, epoch_permutation, iterate_batches, num_batches

KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "ids", "weights")


def _encoded(n=23, length=6, pad_id=0, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, size=n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    input_ids = np.where(mask == 1, rng.integers(4, 50, size=(n, length)), pad_id)
    types = mask * (np.arange(length)[None, :] >= 2)
    return EncodedDataset(input_ids=input_ids, attention_mask=mask, token_type_ids=types,
                          labels=rng.integers(0, 3, size=n), ids=np.arange(n) * 10 + 7, pad_id=pad_id)


def _collect(batches):
    return [dict(b) for b in batches]


def test_epoch_permutation_is_deterministic_and_varies():
    p = epoch_permutation(50, seed=3, epoch=1)
    np.testing.assert_array_equal(p, epoch_permutation(50, seed=3, epoch=1))
    np.testing.assert_array_equal(np.sort(p), np.arange(50))
    assert p.dtype == np.int64
    assert not np.array_equal(p, epoch_permutation(50, seed=3, epoch=2))
    assert not np.array_equal(p, epoch_permutation(50, seed=4, epoch=1))
    with pytest.raises(ValueError):
        epoch_permutation(5, seed=-1, epoch=0)


def test_num_batches():
    assert [num_batches(n, 8) for n in (0, 1, 8, 9, 16, 17)] == [0, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="batch_size"):
        num_batches(5, 0)


def test_unshuffled_batches_follow_dataset_order_and_pad_last():
    enc = _encoded(n=23, pad_id=5)
    batches = _collect(iterate_batches(enc, 8))
    assert len(batches) == num_batches(23, 8) == 3
    for b in batches:
        assert {k: b[k].shape[0] for k in KEYS} == {k: 8 for k in KEYS}
        assert b["input_ids"].shape == (8, enc.max_length)
        assert (b["input_ids"].dtype, b["attention_mask"].dtype, b["token_type_ids"].dtype) == (np.int32,) * 3
        assert (b["labels"].dtype, b["ids"].dtype, b["weights"].dtype) == (np.int32, np.int64, np.float32)
    ids = np.concatenate([b["ids"] for b in batches])
    np.testing.assert_array_equal(ids[:23], enc.ids)
    last = batches[-1]
    real = slice(0, 7)
    pad = slice(7, 8)
    np.testing.assert_array_equal(last["weights"], [1] * 7 + [0])
    np.testing.assert_array_equal(last["input_ids"][real], enc.input_ids[16:])
    np.testing.assert_array_equal(last["labels"][real], enc.labels[16:])
    np.testing.assert_array_equal(last["token_type_ids"][real], enc.token_type_ids[16:])
    assert (last["ids"][pad] == -1).all() and (last["labels"][pad] == 0).all()
    assert (last["input_ids"][pad] == 5).all()  # the dataset's pad id
    assert (last["attention_mask"][pad] == 0).all() and (last["token_type_ids"][pad] == 0).all()


def test_shuffled_epoch_visits_every_example_once_in_permutation_order():
    enc = _encoded(n=23)
    for epoch in (0, 1):
        batches = _collect(iterate_batches(enc, 5, seed=11, epoch=epoch))
        ids = np.concatenate([b["ids"] for b in batches])
        weights = np.concatenate([b["weights"] for b in batches])
        np.testing.assert_array_equal(ids[weights > 0], enc.ids[epoch_permutation(23, 11, epoch)])
        # rows travel together: each row's tokens/labels belong to its id
        for b in batches:
            rows = (b["ids"][b["weights"] > 0] - 7) // 10
            np.testing.assert_array_equal(b["input_ids"][b["weights"] > 0], enc.input_ids[rows])
            np.testing.assert_array_equal(b["labels"][b["weights"] > 0], enc.labels[rows])
    e0 = np.concatenate([b["ids"] for b in iterate_batches(enc, 5, seed=11, epoch=0)])
    e1 = np.concatenate([b["ids"] for b in iterate_batches(enc, 5, seed=11, epoch=1)])
    assert not np.array_equal(e0, e1)


@pytest.mark.parametrize("seed", [None, 0, 7])
def test_keep_removes_exactly_and_keeps_relative_order(seed):
    enc = _encoded(n=41)
    rng = np.random.default_rng(123)
    full = np.concatenate([b["ids"][b["weights"] > 0] for b in iterate_batches(enc, 6, seed=seed, epoch=2)])
    for trial in range(5):
        keep = rng.random(41) < 0.6
        batches = _collect(iterate_batches(enc, 6, seed=seed, epoch=2, keep=keep))
        assert len(batches) == num_batches(int(keep.sum()), 6)
        real = np.concatenate([b["ids"][b["weights"] > 0] for b in batches])
        padded = np.concatenate([b["ids"][b["weights"] == 0] for b in batches])
        assert (padded == -1).all() and len(padded) == len(batches) * 6 - keep.sum()
        assert sorted(real.tolist()) == sorted(enc.ids[keep].tolist())  # each kept id exactly once
        assert not set(real.tolist()) & set(enc.ids[~keep].tolist())  # removed ids never appear
        np.testing.assert_array_equal(real, [i for i in full if i in set(enc.ids[keep].tolist())])
    assert list(iterate_batches(enc, 6, seed=seed, keep=np.zeros(41, bool))) == []


def test_batch_order_matches_iteration():
    enc = _encoded(n=17)
    keep = np.arange(17) % 3 != 0
    order = batch_order(17, seed=5, epoch=3, keep=keep)
    ids = np.concatenate([b["ids"] for b in iterate_batches(enc, 4, seed=5, epoch=3, keep=keep)])
    np.testing.assert_array_equal(ids[ids >= 0], enc.ids[order])


def test_small_and_empty_datasets():
    enc = _encoded(n=3)
    (only,) = _collect(iterate_batches(enc, 8))
    np.testing.assert_array_equal(only["weights"], [1, 1, 1, 0, 0, 0, 0, 0])
    empty = enc.subset(np.zeros(3, bool))
    assert list(iterate_batches(empty, 4, seed=0)) == []


def test_bad_arguments():
    enc = _encoded(n=10)
    with pytest.raises(ValueError, match="keep"):
        next(iterate_batches(enc, 4, keep=np.ones(9, bool)))
    with pytest.raises(ValueError, match="keep"):
        next(iterate_batches(enc, 4, keep=np.ones(10, int)))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(enc, 0))
