"""Retrieval metrics on tiny examples whose values are worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.errors import ConfigError
from facerec.metrics.retrieval import (
    attribute_metrics,
    attribute_topk_accuracy,
    map_at_r,
    mean_attribute_distance,
    precision_at_1,
    precision_at_k,
    random_ranking,
    random_ranking_baseline,
    recall_at_k,
    relevant_counts,
)

# Three queries with identities 1, 2, 3 and their top-4 result identities.
Q = np.array([1, 2, 3])
R = np.array(
    [
        [1, 5, 1, 6],  # relevant at ranks 1 and 3
        [7, 2, 8, 9],  # relevant at rank 2
        [4, 4, 4, 4],  # none
    ]
)


def test_precision_at_k():
    # k=1: (1 + 0 + 0) / 3
    assert precision_at_k(Q, R, 1) == pytest.approx(1 / 3)
    # k=2: (1/2 + 1/2 + 0) / 3
    assert precision_at_k(Q, R, 2) == pytest.approx(1 / 3)
    # k=4: (2/4 + 1/4 + 0) / 3 = 0.25
    assert precision_at_k(Q, R, 4) == pytest.approx(0.25)
    assert precision_at_1(Q, R) == pytest.approx(1 / 3)


def test_recall_at_k_is_hit_rate():
    assert recall_at_k(Q, R, 1) == pytest.approx(1 / 3)  # only query 0 hits at rank 1
    assert recall_at_k(Q, R, 2) == pytest.approx(2 / 3)  # query 1 hits at rank 2
    assert recall_at_k(Q, R, 4) == pytest.approx(2 / 3)  # query 2 never hits
    assert recall_at_k(Q, R, 1) == precision_at_1(Q, R)


def test_map_at_r_hand_computed():
    # Gallery: identity 1 x2, identity 2 x3, identity 3 x1 -> R = 2, 3, 1.
    gallery = np.array([1, 1, 2, 2, 2, 3, 4, 5])
    np.testing.assert_array_equal(relevant_counts(Q, gallery), [2, 3, 1])
    # q0, R=2: ranks 1..2 = [1, 5]: P(1)=1, rank 2 irrelevant -> (1 + 0) / 2 = 0.5
    #   (the relevant item at rank 3 is beyond R and does not count)
    # q1, R=3: ranks 1..3 = [7, 2, 8]: P(2)=1/2 -> (1/2) / 3 = 1/6
    # q2, R=1: rank 1 = 4 irrelevant -> 0
    assert map_at_r(Q, R, gallery) == pytest.approx((0.5 + 1 / 6 + 0) / 3)


def test_map_at_r_single_query_and_perfect_ranking():
    # R = 4, relevance [1, 0, 1, 0]: P(1) = 1, P(3) = 2/3 -> (1 + 2/3) / 4.
    # (R-precision would be 2/4 here; MAP@R also rewards the relevant item being first.)
    assert map_at_r(np.array([0]), np.array([[0, 9, 0, 9]]), np.array([0, 0, 0, 0, 9])) == pytest.approx((1 + 2 / 3) / 4)
    assert map_at_r(np.array([0]), np.array([[0, 0, 0, 0]]), np.array([0, 0, 0, 0])) == pytest.approx(1.0)


def test_map_at_r_errors():
    with pytest.raises(ConfigError, match=r"1 queries with no same-label gallery item \(first: query 2"):
        map_at_r(Q, R, np.array([1, 2, 2]))
    with pytest.raises(ConfigError, match=r"at least max R = 5 \(query 0\); search with k >= 5"):
        map_at_r(Q, R, np.array([1] * 5 + [2, 3]))


def test_identity_metric_input_errors():
    with pytest.raises(ConfigError, match=r"k=5 is invalid: expected k <= 4"):
        precision_at_k(Q, R, 5)
    with pytest.raises(ConfigError, match=r"k=0 is invalid: expected an integer >= 1"):
        recall_at_k(Q, R, 0)
    with pytest.raises(ConfigError, match=r"retrieved_labels='array of shape \(2, 4\)'"):
        precision_at_k(Q, R[:2], 1)


# Attributes: 4 attributes, -1/1.
QA = np.array([[1, 1, -1, -1], [1, -1, 1, -1]], dtype=np.int8)
GA = np.array(
    [
        [1, 1, -1, -1],  # 0: equal to query 0, 2 agreements with query 1
        [-1, -1, 1, 1],  # 1: opposite of query 0, 2 agreements with query 1
        [1, 1, 1, -1],   # 2: 3 agreements with q0, 3 with q1
        [1, -1, 1, -1],  # 3: 2 with q0, equal to q1
    ],
    dtype=np.int8,
)
RT = np.array([[0, 2, 1], [3, 2, 0]])


def test_attribute_accuracy_and_distance_hand_computed():
    # q0 agreements with results [0, 2, 1] = [4, 3, 0]; q1 with [3, 2, 0] = [4, 3, 2].
    # k=1: (4 + 4) / (2 * 4) = 1.0 ; distance = mean(0, 0) = 0
    assert attribute_topk_accuracy(QA, GA, RT, 1) == pytest.approx(1.0)
    assert mean_attribute_distance(QA, GA, RT, 1) == pytest.approx(0.0)
    # k=2: (4+3+4+3) / (4 results * 4 attrs) = 14/16 ; distance = mean(0,1,0,1) = 0.5
    assert attribute_topk_accuracy(QA, GA, RT, 2) == pytest.approx(14 / 16)
    assert mean_attribute_distance(QA, GA, RT, 2) == pytest.approx(0.5)
    # k=3: (4+3+0+4+3+2) / 24 = 16/24 ; distance = mean(0,1,4,0,1,2) = 8/6
    assert attribute_topk_accuracy(QA, GA, RT, 3) == pytest.approx(16 / 24)
    assert mean_attribute_distance(QA, GA, RT, 3) == pytest.approx(8 / 6)


def test_attribute_metrics_table_clips_k_to_gallery():
    df = attribute_metrics(QA, GA, np.array([[0, 2, 1, 3], [3, 2, 0, 1]]), ks=(1, 3, 10, 1000))
    # 10 and 1000 both clip to the gallery size 4 and appear once.
    assert df["k"].tolist() == [1, 3, 4]
    # k=4: q0 agreements [4,3,0,2], q1 [4,3,2,2] -> 20/32; distance 40/... = 4 - 20/8 = 1.5
    np.testing.assert_allclose(df["attribute_accuracy"], [1.0, 16 / 24, 20 / 32])
    np.testing.assert_allclose(df["mean_attribute_distance"], [0.0, 8 / 6, 1.5])


def test_attribute_metric_errors():
    with pytest.raises(ConfigError, match=r"retrieved='positions in \[0, 7\]'.*0-based rows of gallery_attrs, in \[0, 3\]"):
        attribute_topk_accuracy(QA, GA, np.array([[0, 7], [1, 2]]), 1)
    with pytest.raises(ConfigError, match=r"gallery_attrs='array of shape \(4, 3\)'"):
        attribute_topk_accuracy(QA, GA[:, :3], RT, 1)
    with pytest.raises(ConfigError, match=r"ks=4 is invalid: expected k <= 3"):
        attribute_metrics(QA, GA, RT, ks=(1, 10))


def test_random_ranking_is_seeded_and_without_repeats():
    a = random_ranking(5, 50, 20, seed=3)
    assert a.shape == (5, 20)
    np.testing.assert_array_equal(a, random_ranking(5, 50, 20, seed=3))
    assert not np.array_equal(a, random_ranking(5, 50, 20, seed=4))
    assert all(len(set(row)) == 20 for row in a)
    assert a.min() >= 0 and a.max() < 50


def test_random_ranking_baseline_matches_its_expectation():
    # With k = the whole gallery, a random ranking includes every item once, so the metric
    # equals the mean agreement over all query-gallery pairs exactly: hand value from above,
    # q0 vs all = [4,0,3,2], q1 vs all = [2,2,3,4] -> 20/32.
    df = random_ranking_baseline(QA, GA, ks=(4,), seed=0)
    assert df["attribute_accuracy"].iloc[0] == pytest.approx(20 / 32)
    assert df["mean_attribute_distance"].iloc[0] == pytest.approx(1.5)
    # Larger random example: close to the all-pairs expectation.
    rng = np.random.default_rng(0)
    qa = rng.choice([-1, 1], size=(200, 40)).astype(np.int8)
    ga = rng.choice([-1, 1], size=(3000, 40), p=[0.3, 0.7]).astype(np.int8)
    expect = (qa[:, None, :] == ga[None, :, :]).mean()
    df = random_ranking_baseline(qa, ga, ks=(10, 100, 1000), seed=1)
    np.testing.assert_allclose(df["attribute_accuracy"], expect, atol=0.01)
    np.testing.assert_allclose(df["mean_attribute_distance"], 40 * (1 - df["attribute_accuracy"]), rtol=1e-9)
