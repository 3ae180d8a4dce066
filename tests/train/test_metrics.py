"""Leave-one-out validation metrics, by hand on points of a line and against
pytorch-metric-learning's AccuracyCalculator."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.train.loop import leave_one_out_metrics


def test_hand_computed_on_a_line():
    # A at 0, 1, 5.2; B at 2.5, 6, 7 (second coordinate 0). Neighbour order by hand:
    #   q=0   A: 1(A) 2.5(B) 5.2(A)   -> P@1 1, AP@R (R=2) = (1 + 0)/2 = 0.5
    #   q=1   A: 0(A) 2.5(B) 5.2(A)   -> 1, 0.5
    #   q=5.2 A: 6(B) 7(B) ...        -> 0, 0
    #   q=2.5 B: 1(A) 0(A) 5.2(A)     -> 0, 0
    #   q=6   B: 5.2(A) 7(B)          -> 0, (0 + 1/2)/2 = 0.25
    #   q=7   B: 6(B) 5.2(A)          -> 1, (1 + 0)/2 = 0.5
    x = np.array([[0, 0], [1, 0], [5.2, 0], [2.5, 0], [6, 0], [7, 0]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    m = leave_one_out_metrics(x, labels)
    assert m["precision_at_1"] == pytest.approx(3 / 6)
    assert m["map_at_r"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0.25 + 0.5) / 6)


def test_perfect_clusters_score_one_and_singletons_are_skipped():
    x = np.array([[0, 0], [0, 0.1], [10, 10], [10, 10.1], [50, 50]], dtype=np.float32)
    m = leave_one_out_metrics(x, np.array([1, 1, 2, 2, 3]))  # identity 3 has no match: not a query
    assert m == {"precision_at_1": 1.0, "map_at_r": 1.0}


def test_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    import torch
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.inference import CustomKNN

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), rng.integers(2, 7, 12))
    centres = rng.normal(size=(12, 8))
    x = (centres[labels] + rng.normal(scale=0.9, size=(len(labels), 8))).astype(np.float32)
    ours = leave_one_out_metrics(x, labels)
    calc = pml.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count",
                                 knn_func=CustomKNN(LpDistance(normalize_embeddings=False)))
    ref = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels), ref_includes_query=True)
    assert ours["precision_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
