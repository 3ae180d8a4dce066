"""The NN-descent k-NN graph against an exact search done here with numpy."""

import numpy as np
import pytest

from facerec.cluster import ClusterConfig, bcubed, cluster_embeddings
from facerec.cluster.knn import EXACT_UP_TO, choose_kind, knn_graph
from facerec.cluster.nndescent import NNDescentParams, nndescent_graph
from facerec.errors import ConfigError


def faces(n_people: int, per: int, dim: int = 64, seed: int = 0):
    """People as tight clusters at random directions, spread like real embeddings: same person
    about 0.4 apart, strangers about 1.2."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n_people, dim))
    c *= 0.85 / np.linalg.norm(c, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_people), per)
    return (c[y] + rng.normal(scale=0.4 / np.sqrt(2 * dim), size=(len(y), dim))).astype(np.float32), y


def exact(x: np.ndarray, k: int):
    sq = (x.astype(np.float64) ** 2).sum(1)
    full = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x.astype(np.float64) @ x.T.astype(np.float64), 0))
    np.fill_diagonal(full, np.inf)
    i = np.argsort(full, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(full, i, 1), i


def recall(got: np.ndarray, want: np.ndarray, mask: np.ndarray | None = None) -> float:
    hits = [np.isin(w[m] if mask is not None else w, g).sum() for g, w, m in
            zip(got, want, mask if mask is not None else [None] * len(got))]
    total = mask.sum() if mask is not None else want.size
    return float(np.sum(hits) / total)


# leaves far smaller than the data, so the forest alone cannot be exact and the descent has work to do
SMALL = NNDescentParams(trees=4, leaf=64, rho=8)


@pytest.fixture(scope="module")
def data():
    x, y = faces(300, 20)  # 6,000 rows
    return x, y, exact(x, 10)


def test_graph_matches_exact_search(data):
    x, _, (wd, wi) = data
    d, i = nndescent_graph(x, 10, SMALL, use_ray=False)
    assert d.shape == i.shape == (len(x), 10)
    # well formed: no self, no repeats, ascending, distances those of the ids
    assert not (i == np.arange(len(x))[:, None]).any()
    assert all(len(set(r)) == 10 for r in i)
    assert (np.diff(d, axis=1) >= 0).all()
    np.testing.assert_allclose(d, np.linalg.norm(x[:, None, :] - x[i], axis=2), atol=1e-4)
    assert recall(i, wi) >= 0.99
    # every neighbour under a link distance (what the clustering reads) is found
    near = wd <= 0.6
    assert near.sum() > 10 * len(x) // 2
    assert recall(i, wi, near) >= 0.99


def test_descent_improves_on_the_forest(data):
    x, _, (_, wi) = data
    _, forest_only = nndescent_graph(x, 10, NNDescentParams(trees=3, leaf=64, max_rounds=0), use_ray=False)
    _, descended = nndescent_graph(x, 10, NNDescentParams(trees=3, leaf=64), use_ray=False)
    assert recall(forest_only, wi) < 0.8 and recall(descended, wi) > 0.95


def test_on_ray_equals_in_process(data, ray_local):
    x, _, _ = data
    d1, i1 = nndescent_graph(x, 10, SMALL, use_ray=True)
    d0, i0 = nndescent_graph(x, 10, SMALL, use_ray=False)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_allclose(d1, d0, atol=1e-6)


def test_one_leaf_is_exact():
    x, _ = faces(20, 10, seed=3)  # 200 rows in one leaf: the exact answer
    wd, _ = exact(x, 7)
    d, _ = nndescent_graph(x, 7, NNDescentParams(), use_ray=False)
    np.testing.assert_allclose(d, wd, atol=1e-4)


def test_progress_adds_up_to_n(data):
    x, _, _ = data
    seen = []
    nndescent_graph(x, 10, SMALL, use_ray=False, progress=seen.append)
    assert sum(seen) == len(x) and all(s > 0 for s in seen)


def test_clustering_with_nndescent_equals_exact(data):
    x, y, _ = data
    cfg = dict(link=0.6, merge=0.55, k=10, use_ray=False)
    a = cluster_embeddings(x, ClusterConfig(index="exact", **cfg)).groups
    b = cluster_embeddings(x, ClusterConfig(index="nndescent", **cfg)).groups
    assert bcubed(a, y)["f"] == 1.0
    assert bcubed(b, a) == {"precision": 1.0, "recall": 1.0, "f": 1.0}


def test_auto_chooses_by_size():
    assert choose_kind("auto", EXACT_UP_TO) == "exact"
    assert choose_kind("auto", EXACT_UP_TO + 1) == "nndescent"
    assert choose_kind("hnsw", 10) == "hnsw"
    with pytest.raises(ConfigError, match=r"index kind='annoy' is invalid: expected one of \['auto', 'nndescent', 'exact'"):
        choose_kind("annoy", 10)


def test_knn_graph_takes_nndescent_params(data):
    x, _, _ = data
    d, i = knn_graph(x[:500], 5, "nndescent", use_ray=False, index_params={"trees": 2, "leaf": 64})
    assert i.shape == (500, 5)
    with pytest.raises(ConfigError, match=r"leaf=8 is invalid: expected an integer >= 16"):
        knn_graph(x[:500], 5, "nndescent", use_ray=False, index_params={"leaf": 8})


@pytest.mark.parametrize("field, value, message", [
    ("trees", 0, r"trees=0 is invalid: expected an integer >= 1"),
    ("rho", 1.5, r"rho=1.5 is invalid: expected an integer >= 1"),
    ("max_rounds", -1, r"max_rounds=-1 is invalid: expected an integer >= 0"),
    ("delta", 1.0, r"delta=1.0 is invalid: expected a share in \[0, 1\)"),
    ("seed", True, r"seed=True is invalid: expected an integer >= 0"),
])
def test_params_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        NNDescentParams(**{field: value})


def test_join_lists_hold_nearest_and_reverse_neighbours():
    from facerec.cluster.nndescent import _join_lists

    rng = np.random.default_rng(0)
    i = np.stack([rng.permutation(50)[:6] for _ in range(50)])
    i[3, 2] = -1
    j = _join_lists(i, 3)
    for r in range(50):
        np.testing.assert_array_equal(j[r, :3], i[r, :3])
        # the rows that list r, those that rank it nearest first (brute force)
        want = [row for _, row in sorted((c, row) for row in range(50) for c in range(6) if i[row, c] == r)][:3]
        assert [v for v in j[r, 3:] if v >= 0] == want
