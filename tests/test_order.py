"""The total order of candidates and the float32 ranks handed to StarDist."""
import numpy as np
import pytest

from stardist_hpc.geometry.order import MAX_RANKED, rank_scores, total_order


def test_total_order_is_prob_then_point_then_row():
    prob = np.array([0.5, 1.0, 1.0, 1.0, 0.9, 1.0], np.float32)
    points = np.array([[0, 0, 0], [2, 0, 0], [1, 5, 5], [1, 5, 4], [0, 0, 0], [1, 5, 4]])
    rows = np.array([10, 11, 12, 13, 14, 9])
    order = total_order(prob, points, rows)
    # prob 1.0 first, by z, y, x; the two candidates at (1, 5, 4) by row
    np.testing.assert_array_equal(rows[order], [9, 13, 12, 11, 14, 10])


def test_total_order_does_not_depend_on_input_order():
    rng = np.random.default_rng(0)
    prob = rng.choice([1.0, 0.75, 0.5], 200).astype(np.float32)
    points = rng.integers(0, 3, (200, 3))
    rows = rng.permutation(200)
    reference = rows[total_order(prob, points, rows)]
    shuffle = rng.permutation(200)
    np.testing.assert_array_equal(
        rows[shuffle][total_order(prob[shuffle], points[shuffle], rows[shuffle])], reference)


def test_rank_scores_strictly_decrease_and_are_exact_float32():
    rng = np.random.default_rng(1)
    prob = rng.choice([1.0, 0.5], 1000).astype(np.float32)
    order = total_order(prob, rng.integers(0, 5, (1000, 3)), np.arange(1000))
    scores = rank_scores(order)
    assert scores.dtype == np.float32
    assert np.all(np.diff(scores[order]) == -1)
    # StarDist sorts with an unstable argsort: distinct scores make its order ours
    np.testing.assert_array_equal(np.argsort(scores)[::-1], order)


def test_rank_scores_refuse_more_candidates_than_float32_can_rank():
    with pytest.raises(ValueError, match="float32"):
        rank_scores(np.broadcast_to(0, (MAX_RANKED + 1,)))
