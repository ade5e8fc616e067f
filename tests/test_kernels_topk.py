"""Tests for tracin_jax.kernels.topk: streaming and sharded top-K equal a full sort."""
import numpy as np
import pytest

from tracin_jax.kernels.topk import init_topk, merge_topk, running_topk_update


def topk_from_scores(scores, ids, k, largest=True):
    """Top-k of a whole score matrix through one running update."""
    return running_topk_update(*init_topk(np.shape(scores)[0], k, largest), scores, ids, largest)


def reference_topk(scores, ids, k, largest):
    """Full lexsort per row: by score (desc if largest), ties by smaller id; -1 ids and NaN
    scores ignored (a NaN ranks after the empty slots, so it is never kept). ``ids``: [N] or
    per row [M, N]."""
    fill = -np.inf if largest else np.inf
    out_scores = np.full((scores.shape[0], k), fill, np.float32)
    out_ids = np.full((scores.shape[0], k), -1, np.int32)
    ids = np.broadcast_to(ids, scores.shape)
    for m in range(scores.shape[0]):
        valid = (ids[m] != -1) & ~np.isnan(scores[m])
        row, row_ids = scores[m][valid], ids[m][valid]
        order = np.lexsort((row_ids, -row if largest else row))[:k]
        out_scores[m, : order.size] = row[order]
        out_ids[m, : order.size] = row_ids[order]
    return out_scores, out_ids


def random_candidates(seed, rows=4, count=37):
    rng = np.random.default_rng(seed)
    scores = rng.integers(-2, 3, (rows, count)).astype(np.float32)  # many exact ties
    scores[:, ::5] += rng.normal(size=scores[:, ::5].shape).astype(np.float32)
    ids = rng.permutation(1000)[:count].astype(np.int32)  # unsorted: ties by id are real work
    return scores, ids


def stream(scores, ids, k, largest, seed, update=running_topk_update):
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, ids.shape[-1]), size=4, replace=False))
    best = init_topk(scores.shape[0], k, largest)
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, ids.shape[-1]]):
        best = update(*best, scores[:, lo:hi], ids[..., lo:hi], largest=largest)
    return best


def assert_topk_equal(got, want):
    np.testing.assert_array_equal(np.asarray(got[1]), want[1])
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 5, 37, 50])
@pytest.mark.parametrize("largest", [True, False])
def test_streaming_equals_full_sort(seed, k, largest):
    scores, ids = random_candidates(seed)
    got = stream(scores, ids, k, largest, seed)
    assert got[0].dtype == np.float32 and got[1].dtype == np.int32
    assert_topk_equal(got, reference_topk(scores, ids, k, largest))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("largest", [True, False])
def test_streaming_equals_full_sort_with_per_row_ids_and_non_finite_scores(seed, largest):
    # Per-row ids [M, N] with -1 holes (candidate restrictions), ±inf and NaN scores, ties.
    rng = np.random.default_rng(seed)
    scores, ids = random_candidates(seed, rows=6, count=45)
    scores[rng.random(scores.shape) < 0.05] = np.inf
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    scores[rng.random(scores.shape) < 0.05] = np.nan
    per_row = np.where(rng.random(scores.shape) < 0.3, -1, np.broadcast_to(ids, scores.shape))
    for k in (1, 4, 12, 60):
        want = reference_topk(scores, per_row, k, largest)
        got = stream(scores, per_row, k, largest, seed)
        assert got[0].dtype == np.float32 and got[1].dtype == np.int32
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def test_k_beyond_count_is_padded():
    scores, ids = random_candidates(0, rows=2, count=6)
    for largest, fill in ((True, -np.inf), (False, np.inf)):
        got_scores, got_ids = topk_from_scores(scores, ids, 9, largest)
        np.testing.assert_array_equal(np.asarray(got_ids)[:, 6:], -1)
        np.testing.assert_array_equal(np.asarray(got_scores)[:, 6:], fill)
        assert set(np.asarray(got_ids)[0, :6].tolist()) == set(ids.tolist())


def test_ties_broken_by_smaller_id():
    scores = np.array([[1.0, 3.0, 3.0, 1.0, 3.0]], np.float32)
    ids = np.array([40, 17, 5, 2, 30], np.int32)
    assert_topk_equal(topk_from_scores(scores, ids, 4, True), ([[3, 3, 3, 1]], [[5, 17, 30, 2]]))
    assert_topk_equal(topk_from_scores(scores, ids, 3, False), ([[1, 1, 3]], [[2, 40, 5]]))
    # -0.0 and 0.0 tie, so the smaller id wins.
    assert_topk_equal(topk_from_scores(np.array([[0.0, -0.0]], np.float32), np.array([9, 4]), 1),
                      ([[0.0]], [[4]]))


def test_padding_ids_are_ignored_and_rank_after_infinite_scores():
    def top(scores, ids, k, largest):
        return running_topk_update(*init_topk(1, k, largest), scores, ids, largest=largest)

    scores = np.array([[np.inf, -np.inf, 5.0, -np.inf]], np.float32)
    ids = np.array([-1, 7, -1, 3], np.int32)  # -1 entries are padding even with big scores
    assert_topk_equal(top(scores, ids, 3, True), ([[-np.inf, -np.inf, -np.inf]], [[3, 7, -1]]))
    scores = np.array([[-np.inf, np.inf, -5.0]], np.float32)
    ids = np.array([-1, 8, -1], np.int32)
    assert_topk_equal(top(scores, ids, 2, False), ([[np.inf, np.inf]], [[8, -1]]))


@pytest.mark.parametrize("largest", [True, False])
def test_merge_shards_equals_full_sort(largest):
    scores, ids = random_candidates(4, count=40)
    k = 6
    want = reference_topk(scores, ids, k, largest)
    shards = [topk_from_scores(scores[:, s::4], ids[s::4], k, largest) for s in range(4)]
    got = merge_topk([s for s, _ in shards], [i for _, i in shards], largest=largest)
    assert_topk_equal(got, want)
    stacked = merge_topk(np.stack([s for s, _ in shards]), np.stack([i for _, i in shards]),
                         k=k, largest=largest)
    assert_topk_equal(stacked, want)
    # Ragged shard sizes and a smaller output k (each shard keeps ≥ k entries).
    ragged = [topk_from_scores(scores[:, :3], ids[:3], 2, largest),
              topk_from_scores(scores[:, 3:], ids[3:], 8, largest)]
    got = merge_topk([s for s, _ in ragged], [i for _, i in ragged], k=2, largest=largest)
    assert_topk_equal(got, reference_topk(scores, ids, 2, largest))


def test_bad_inputs_raise():
    best, update = init_topk(3, 4), running_topk_update
    with pytest.raises(ValueError, match=r"new_scores must be \[3, N\]"):
        update(*best, np.zeros((2, 5)), np.arange(5))
    with pytest.raises(ValueError, match="new_ids"):
        update(*best, np.zeros((3, 5)), np.arange(4))
    with pytest.raises(ValueError, match="int32"):
        update(*best, np.zeros((3, 2)), np.array([1, 2**40], np.int64))
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        update(best[0], best[1][:, :2], np.zeros((3, 2)), np.arange(2))
    with pytest.raises(ValueError, match="k must be"):
        init_topk(3, 0)
    with pytest.raises(ValueError, match="one M"):
        merge_topk([np.zeros((3, 2)), np.zeros((2, 2))], [np.zeros((3, 2)), np.zeros((2, 2))])
