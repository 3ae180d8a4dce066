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


def test_tree_partitions_the_rows_into_balanced_leaves():
    from facerec.cluster.nndescent import _tree

    x, _ = faces(50, 41)  # 2,050 rows: odd halves on the way down
    perm, xw, leaves = _tree(x, 100, np.random.default_rng(3))
    np.testing.assert_array_equal(np.sort(perm), np.arange(len(x)))
    np.testing.assert_array_equal(xw, x[perm])
    # contiguous slices that cover every row once, each at most `leaf` and at least half of it
    assert [lo for lo, _ in leaves] == [0] + [hi for _, hi in leaves[:-1]] and leaves[-1][1] == len(x)
    sizes = [hi - lo for lo, hi in leaves]
    assert max(sizes) <= 100 and min(sizes) >= 50
    # the same seed builds the same tree; another seed cuts elsewhere
    again, _, _ = _tree(x, 100, np.random.default_rng(3))
    np.testing.assert_array_equal(perm, again)
    other, _, _ = _tree(x, 100, np.random.default_rng(4))
    assert not np.array_equal(perm, other)


def test_tree_keeps_well_separated_people_together():
    from facerec.cluster.nndescent import _tree

    x, y = faces(64, 16, dim=32)  # people far apart next to their spread: a median cut rarely splits one
    perm, _, leaves = _tree(x, 128, np.random.default_rng(0))
    leaf_of = np.empty(len(x), int)
    for j, (lo, hi) in enumerate(leaves):
        leaf_of[perm[lo:hi]] = j
    # share of same-person pairs that one leaf holds; a random assignment to 8 leaves holds 1/8
    same = [(a, b) for p in range(64) for a in np.flatnonzero(y == p) for b in np.flatnonzero(y == p) if a < b]
    together = np.mean([leaf_of[a] == leaf_of[b] for a, b in same])
    assert together > 0.5


def test_one_round_is_the_local_join():
    """One round of ``_descend`` against the local join written out by hand: each row meets the
    entries of its join list and their join lists, except pairs reached through two stale entries."""
    from facerec.cluster.nndescent import _descend, _is_new, _join_lists, _norms

    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    k = 5
    i = np.stack([rng.choice(np.delete(np.arange(120), r), k, replace=False) for r in range(120)])
    d = ((x[:, None, :] - x[i]) ** 2).sum(2).astype(np.float32)
    join = _join_lists(i, 3)
    before = _join_lists(np.roll(i, 1, axis=1), 3)  # a different previous round: some entries stale
    fresh = _is_new(join, before)
    assert fresh.any() and not fresh.all()
    lo, hi = 10, 90
    got_d, got_i, changed = _descend(x, _norms(x), join, fresh, d, i, lo, hi, k, block=16)
    want_changed = 0
    for r in range(lo, hi):
        cand = set(i[r])
        for a, v in enumerate(join[r]):
            if v < 0:
                continue
            if fresh[r, a]:
                cand.add(int(v))
            for b, c in enumerate(join[v]):
                if c >= 0 and (fresh[r, a] or fresh[v, b]):
                    cand.add(int(c))
        cand.discard(r)
        ranked = sorted(cand, key=lambda c: float(((x[r] - x[c]) ** 2).sum()))[:k]
        assert set(got_i[r - lo]) == set(ranked), r
        np.testing.assert_allclose(np.sort(got_d[r - lo]), sorted(((x[r] - x[c]) ** 2).sum() for c in ranked),
                                   rtol=1e-4, atol=1e-5)
        want_changed += len(set(ranked) - set(i[r]))
    assert changed == want_changed > 0


def test_merge_rows_keeps_the_nearest_of_every_list():
    from facerec.cluster.nndescent import _merge_rows

    rng = np.random.default_rng(2)
    dist = rng.random((30, 40)).astype(np.float32)  # one distance per (row, id), as the descent finds it
    lists = []
    for _ in range(3):
        i = np.stack([rng.choice(40, 4, replace=False) for _ in range(30)])
        lists.append((np.take_along_axis(dist, i, 1), i))
    lists[1][1][7] = lists[0][1][7]  # the same ids twice in a row: each kept once
    lists[1][0][7] = lists[0][0][7]
    d, i = _merge_rows(5, 25, 4, *lists)
    assert len(set(i[7 - 5])) == 4
    for r in range(5, 25):
        best = {}
        for dd, ii in lists:
            for v, c in zip(dd[r], ii[r]):
                best[int(c)] = min(best.get(int(c), np.inf), float(v))
        want = sorted(best.items(), key=lambda t: t[1])[:4]
        assert set(i[r - 5]) == {c for c, _ in want}
        np.testing.assert_allclose(np.sort(d[r - 5]), [v for _, v in want])
