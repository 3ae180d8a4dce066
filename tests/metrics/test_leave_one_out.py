"""Leave-one-out retrieval metrics (training's validation metric): by hand on points of a line,
against pytorch-metric-learning's AccuracyCalculator, blocked = exact, and memory bounded by the
block budget."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from facerec.errors import ConfigError
from facerec.metrics.retrieval import leave_one_out_metrics, loo_block_rows, loo_row_bytes


def exact_reference(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The definition written out on the full float64 distance matrix (what training computed
    before the blocked version): self excluded, a query needs at least one other item of its label."""
    x = np.asarray(x, dtype=np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    p1, aps = [], []
    for i in range(len(x)):
        rel = labels[order[i]] == labels[i]
        r = int(rel.sum())
        if r == 0:
            continue
        p1.append(float(rel[0]))
        aps.append(sum(rel[:j + 1].sum() / (j + 1) for j in range(r) if rel[j]) / r)
    return {"precision_at_1": float(np.mean(p1)), "map_at_r": float(np.mean(aps))}


def clustered(seed: int, identities: int, dim: int, scale: float, max_images: int = 7):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(identities), rng.integers(1, max_images, identities))  # some alone: never queries
    centres = rng.normal(size=(identities, dim))
    x = (centres[labels] + rng.normal(scale=scale, size=(len(labels), dim))).astype(np.float32)
    return x, labels


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
    for block_bytes in (1, 10**9):  # one query per block, and all at once
        m = leave_one_out_metrics(x, labels, block_bytes=block_bytes)
        assert m["precision_at_1"] == pytest.approx(3 / 6)
        assert m["map_at_r"] == pytest.approx((0.5 + 0.5 + 0 + 0 + 0.25 + 0.5) / 6)


def test_perfect_clusters_score_one_and_singletons_are_skipped():
    x = np.array([[0, 0], [0, 0.1], [10, 10], [10, 10.1], [50, 50]], dtype=np.float32)
    m = leave_one_out_metrics(x, np.array([1, 1, 2, 2, 3]))  # identity 3 has no match: not a query
    assert m == {"precision_at_1": 1.0, "map_at_r": 1.0}
    nan = leave_one_out_metrics(x, np.arange(5))
    assert np.isnan(nan["precision_at_1"]) and np.isnan(nan["map_at_r"])


@pytest.mark.parametrize("seed,scale", [(0, 0.9), (1, 0.4), (2, 1.5)])
def test_matches_pytorch_metric_learning(seed, scale):
    """pml's leave-one-out protocol (reference = queries, the query's own index removed from its
    neighbours, lone labels not queries) on random data: continuous values, so no distance ties."""
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    import torch
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.inference import CustomKNN

    x, labels = clustered(seed, identities=15, dim=8, scale=scale)
    calc = pml.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count",
                                 knn_func=CustomKNN(LpDistance(normalize_embeddings=False)))
    ref = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))  # reference omitted: includes queries
    for block_bytes in (1, 4096, 10**9):
        ours = leave_one_out_metrics(x, labels, block_bytes=block_bytes)
        assert ours["precision_at_1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
        assert ours["map_at_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    assert 0.05 < ours["map_at_r"] < 0.95  # neither trivial nor hopeless: ranks actually matter


def test_blocked_equals_the_exact_full_matrix():
    x, labels = clustered(3, identities=40, dim=16, scale=0.8, max_images=12)
    want = exact_reference(x, labels)
    step_one = leave_one_out_metrics(x, labels, block_bytes=1)
    several = leave_one_out_metrics(x, labels, block_bytes=5 * loo_row_bytes(len(x), 11, 16))
    whole = leave_one_out_metrics(x, labels, block_bytes=10**9)
    for got in (step_one, several, whole):
        assert got["precision_at_1"] == pytest.approx(want["precision_at_1"], abs=1e-12)
        assert got["map_at_r"] == pytest.approx(want["map_at_r"], abs=1e-12)


def test_a_tight_cluster_far_from_the_origin_is_ranked_exactly():
    """A model barely out of initialisation maps every face close to one point: float32 scores of
    uncentred embeddings would rank by rounding noise."""
    x, labels = clustered(5, identities=20, dim=16, scale=0.8, max_images=8)
    x64 = 100.0 + 1e-4 * x.astype(np.float64)
    tight = x64.astype(np.float32)
    want = exact_reference(tight, labels)
    got = leave_one_out_metrics(tight, labels, block_bytes=4096)
    assert got["map_at_r"] == pytest.approx(want["map_at_r"], abs=1e-12)
    assert got["precision_at_1"] == pytest.approx(want["precision_at_1"], abs=1e-12)
    assert want["map_at_r"] > 0.2  # the clusters survive float32 storage: there is an order to get right


def test_block_rows_fit_the_budget():
    n, k, dim = 20_000, 30, 128
    per_row = loo_row_bytes(n, k, dim)
    budget = 64 << 20
    rows = loo_block_rows(n, k, dim, budget)
    assert rows * per_row <= budget < (rows + 1) * per_row
    assert loo_block_rows(n, k, dim, 1) == 1  # below one row: one row at a time
    assert loo_block_rows(10, 3, 4, 10**12) == 10  # never more rows than items
    with pytest.raises(ConfigError, match=r"block_bytes=0 is invalid: expected a positive number of bytes"):
        loo_block_rows(n, k, dim, 0)


def test_memory_stays_within_the_block_budget():
    """numpy reports its buffers to tracemalloc: the peak while computing is the block budget plus
    the O(n d) copies of the input, far below the n x n matrix the metric once built."""
    x, labels = clustered(4, identities=300, dim=16, scale=0.8, max_images=20)
    n = len(x)
    full_matrix = n * n * 8
    budget = 1 << 20
    assert full_matrix > 30 * budget
    leave_one_out_metrics(x[:50], labels[:50], block_bytes=budget)  # imports and caches warmed up
    tracemalloc.start()
    try:
        leave_one_out_metrics(x, labels, block_bytes=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    linear = 8 * x.nbytes + 64 * n  # the float32 copy, its transpose, norms, R and the label arrays
    assert peak <= budget + linear, (peak, budget, linear, full_matrix)


def test_bad_shapes_are_named():
    with pytest.raises(ConfigError, match=r"labels='array of shape \(3,\)' is invalid: expected a 1-D array of 4 labels"):
        leave_one_out_metrics(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ConfigError, match=r"embeddings='array of shape \(4,\)'"):
        leave_one_out_metrics(np.zeros(4), np.zeros(4))


def test_query_gallery_metrics_match_pytorch_metric_learning():
    """The evaluation protocol (queries searched in a separate gallery, facerec.eval.tables) uses the
    same AP@R: precision_at_1 and map_at_r of an exact ranking against pml with a reference set."""
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    import torch
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.inference import CustomKNN

    from facerec.metrics.retrieval import map_at_r, precision_at_1

    x, labels = clustered(6, identities=12, dim=8, scale=0.9, max_images=9)
    rng = np.random.default_rng(0)
    is_query = np.zeros(len(x), bool)
    for ident in np.unique(labels):  # one query per identity with at least two images
        rows = np.flatnonzero(labels == ident)
        if len(rows) >= 2:
            is_query[rng.choice(rows)] = True
    q, g = x[is_query], x[~is_query]
    ql, gl = labels[is_query], labels[~is_query]
    order = np.argsort(((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1), axis=1, kind="stable")
    retrieved = gl[order]
    calc = pml.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count",
                                 knn_func=CustomKNN(LpDistance(normalize_embeddings=False)))
    ref = calc.get_accuracy(torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(g), torch.from_numpy(gl),
                            ref_includes_query=False)
    assert precision_at_1(ql, retrieved) == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert map_at_r(ql, retrieved, gl) == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
