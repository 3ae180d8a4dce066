"""The k-nearest-neighbour graph of many embeddings: a random-projection forest, then NN-descent.

1. **Forest** (random partition trees, Dasgupta & Sinha 2015, "Randomized partition trees for
   nearest neighbor search"; a forest starts the graph as in Tang et al. 2016, "Visualizing
   large-scale and high-dimensional data" (LargeVis), and pynndescent): each tree halves every node
   of a level at the median of its projection on that level's random direction (a k-d tree of
   randomly rotated data), down to leaves of at most ``leaf`` faces; every leaf is searched exactly
   (one BLAS product), and each face keeps the ``k`` nearest it met in any tree. One Ray task per
   share of the trees; the shares' lists are merged by blocks of rows, also as Ray tasks.
2. **NN-descent** (Dong, Charikar & Li 2011, "Efficient k-nearest neighbor graph construction for
   generic similarity measures", WWW): a neighbour of a neighbour is likely a neighbour. Each round
   compares every face with the neighbours of its ``rho`` nearest and ``rho`` reverse neighbours
   and keeps the ``k`` nearest, skipping the pairs an earlier round compared (the local join's
   new/old flags); rounds stop when fewer than ``delta`` x n x k entries change (or after
   ``max_rounds``). Each round is one Ray task per block of faces, all reading the previous
   round's graph, so the result does not depend on how the blocks are spread.

The trees must cut the data differently: the descent only reaches faces that some tree put in a
leaf with a face's neighbours (one tree's leaves are never joined to each other).

Cost: the forest is O(trees x n (d log(n / leaf) + leaf d)) and a round at most O(n (2 rho)^2 d),
with rounds that grow slowly with n. The faces are first put in the order of the first tree's
leaves, so the faces a block compares lie close together in memory. The result is approximate:
the test suite measures its recall against an exact search, and ``benchmarks/bench_cluster.py
scale`` at each size it runs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from facerec.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NNDescentParams:
    """``trees``/``leaf``: the forest; ``rho``: forward and reverse neighbours whose neighbours a round
    compares; ``max_rounds``/``delta``: when the descent stops; ``seed``: the trees' random directions.
    The defaults were chosen with ``benchmarks/bench_cluster.py scale`` at 100k and 1M faces: fewer
    trees or a smaller ``rho`` lose graph recall, more cost time for little recall."""

    trees: int = 12
    leaf: int = 1024
    rho: int = 6
    max_rounds: int = 8
    delta: float = 0.001
    seed: int = 0

    def __post_init__(self):
        ints = {"trees": (1, "an integer >= 1 (random-projection trees, e.g. 12)"),
                "leaf": (16, "an integer >= 16 (faces per leaf searched exactly, e.g. 1024)"),
                "rho": (1, "an integer >= 1 (neighbours whose neighbours are compared, e.g. 6)"),
                "max_rounds": (0, "an integer >= 0 (NN-descent rounds at most, e.g. 8)"),
                "seed": (0, "an integer >= 0")}
        for name, (low, expected) in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ConfigError(name, v, expected)
        if isinstance(self.delta, bool) or not isinstance(self.delta, (int, float)) or not 0 <= self.delta < 1:
            raise ConfigError("delta", self.delta, "a share in [0, 1) of the graph's entries (e.g. 0.001)")


# ----------------------------------------------------------------------------- the pieces


def _keep_nearest(d_old: np.ndarray, i_old: np.ndarray, d_new: np.ndarray, i_new: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k nearest of two candidate lists, each id once (-1 / inf: empty)."""
    cd = np.concatenate([d_old, d_new], 1)
    ci = np.concatenate([i_old, i_new], 1)
    o = np.argsort(ci, 1, kind="stable")
    ci, cd = np.take_along_axis(ci, o, 1), np.take_along_axis(cd, o, 1)
    dup = np.zeros(ci.shape, bool)
    dup[:, 1:] = ci[:, 1:] == ci[:, :-1]
    cd = np.where(dup | (ci < 0), np.inf, cd)
    p = np.argpartition(cd, k - 1, 1)[:, :k]
    d, i = np.take_along_axis(cd, p, 1), np.take_along_axis(ci, p, 1)
    return d, np.where(np.isinf(d), -1, i)


def _tree(x: np.ndarray, leaf: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """One random-projection tree: (perm, x[perm], leaves), each leaf a slice of the permuted rows.

    Every node of a level is halved at its median along that level's random direction: a k-d tree
    of randomly rotated data, which Dasgupta & Sinha (2015, "Randomized partition trees for nearest
    neighbor search", Algorithmica) analyse beside the RP tree with the same guarantee. A shared
    direction per level means all projections are one product ``x @ R``; the halving then moves row
    numbers and scalars only, never the (n, d) rows, which at a million faces is what the build
    spends its time on."""
    n, dim = x.shape
    depth = max(0, math.ceil(math.log2(max(n, 1) / leaf)))
    q, _ = np.linalg.qr(rng.standard_normal((dim, max(depth, 1))).astype(np.float32))
    proj = np.ascontiguousarray((x @ q[:, :depth]).T)         # (depth, n): one row per level
    perm, nodes = np.arange(n, dtype=_ids(n)), [(0, n)]
    for level in range(depth):
        below = []
        for lo, hi in nodes:
            if hi - lo <= leaf:
                below.append((lo, hi))
                continue
            half = (hi - lo) // 2
            idx = perm[lo:hi]
            perm[lo:hi] = idx[np.argpartition(proj[level][idx], half)]
            below += [(lo, lo + half), (lo + half, hi)]
        nodes = below
    return perm, x[perm], sorted(nodes)


def _forest(x: np.ndarray, k: int, leaf: int, seeds: list[int], own_leaves: list | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest each row met in the leaves of one tree per seed (squared distances), and in
    ``own_leaves``, slices of x's own order (a tree already built)."""
    from threadpoolctl import threadpool_limits

    n = len(x)
    norms = _norms(x)
    d = np.full((n, k), np.inf, np.float32)
    i = np.full((n, k), -1, _ids(n))
    with threadpool_limits(1):  # one task per core: the tasks are the parallelism
        for seed in ([None] if own_leaves else []) + list(seeds):
            perm, xw, leaves = (np.arange(n, dtype=_ids(n)), x, own_leaves) if seed is None else _tree(x, leaf, np.random.default_rng(seed))
            for lo, hi in leaves:
                kk = min(k, hi - lo - 1)
                if kk < 1:
                    continue
                idx = perm[lo:hi]
                # |a - b|^2 less the row's own |a|^2, which does not change its order: in place
                dd = xw[lo:hi] @ xw[lo:hi].T
                dd *= -2
                dd += norms[idx][None, :]
                np.fill_diagonal(dd, np.inf)
                p = np.argpartition(dd, kk - 1, 1)[:, :kk]
                near = np.take_along_axis(dd, p, 1) + norms[idx][:, None]
                d[idx], i[idx] = _keep_nearest(d[idx], i[idx], near, idx[p], k)
    return d, i


def _is_new(lists: np.ndarray, before: np.ndarray | None) -> np.ndarray:
    """Which entries of each row's list were not in that row's list of the round before."""
    if before is None:
        return lists >= 0
    return (lists >= 0) & ~(lists[..., :, None] == before[..., None, :]).any(-1)


def _descend(x: np.ndarray, norms: np.ndarray, join: np.ndarray, fresh: np.ndarray, d: np.ndarray,
             i: np.ndarray, lo: int, hi: int, k: int, block: int = 512) -> tuple[np.ndarray, np.ndarray, int]:
    """One NN-descent round for rows lo..hi: each row against the ``join`` lists of its ``join`` list,
    skipping the pairs the round before compared already: those reached through two entries that are
    not ``fresh`` (the local join's new/old flags). ``d``/``i``: every row's lists (the object store's
    one copy on Ray). Returns rows lo..hi's new lists and how many of their entries are new."""
    from threadpoolctl import threadpool_limits

    n = len(x)
    out_d, out_i, changed = d[lo:hi].copy(), i[lo:hi].copy(), 0
    with threadpool_limits(1):
        # a row whose join list and whose join list's lists hold nothing fresh has nothing to compare
        any_fresh = fresh.any(1)
        mine = join[lo:hi]
        todo = lo + np.flatnonzero(any_fresh[lo:hi] | (any_fresh[np.where(mine < 0, 0, mine)] & (mine >= 0)).any(1))
        for a in range(0, len(todo), block):
            rows = todo[a:a + block]
            f = join[rows]                                          # (B, J)
            f0 = np.where(f < 0, 0, f)
            second = join[f0]                                       # (B, J, J)
            fresh1 = fresh[rows]
            take = (f >= 0)[:, :, None] & (second >= 0) & (fresh1[:, :, None] | fresh[f0])
            # every row's candidates in one row of a padded matrix; n marks an empty slot and sorts last
            cand = np.concatenate([second.reshape(len(rows), -1), f], 1)
            ok = np.concatenate([take.reshape(len(rows), -1), fresh1], 1) & (cand != rows[:, None])
            cand = np.where(ok, cand, n)
            cand.sort(1)
            cand[:, 1:][cand[:, 1:] == cand[:, :-1]] = n            # each (row, candidate) once
            b_idx, slot = np.nonzero(cand < n)
            if len(b_idx) == 0:
                continue
            c = cand[b_idx, slot]
            # |a - b|^2 from the norms and one dot product: no (pairs, d) difference to write
            dot = np.einsum("pd,pd->p", x[rows][b_idx], x[c])
            dist = np.full(cand.shape, np.inf, np.float32)
            dist[b_idx, slot] = np.maximum(norms[rows][b_idx] + norms[c] - 2 * dot, 0)
            m = min(k, cand.shape[1])
            p = np.argpartition(dist, m - 1, 1)[:, :m]
            new_d = np.take_along_axis(dist, p, 1)
            new_i = np.where(np.isinf(new_d), -1, np.take_along_axis(cand, p, 1))
            r = rows - lo
            old = out_i[r]
            out_d[r], out_i[r] = _keep_nearest(out_d[r], old, new_d, new_i, k)
            changed += int(_is_new(out_i[r], old).sum())
    return out_d, out_i, changed


def _ids(n: int) -> type:
    """Row numbers as int32 while they fit: the lists, join lists and candidates are most of the
    memory a round moves."""
    return np.int32 if n < 2 ** 31 else np.int64


def _norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _join_lists(i: np.ndarray, rho: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Rows lo..hi's ``rho`` nearest and up to ``rho`` reverse neighbours (-1 padded): the rows that
    list them, those that rank them nearest first."""
    n, k = i.shape
    hi = n if hi is None else hi
    src, rank = np.nonzero((i >= lo) & (i < hi))
    listed = i[src, rank] - lo
    # one unique int64 key per entry (listed row, then its rank there, then the listing row), so the
    # fast unstable sort gives one order
    o = np.argsort((listed.astype(np.int64) * k + rank) * n + src)
    listed, src = listed[o], src[o]
    start = np.concatenate([[0], np.cumsum(np.bincount(listed, minlength=hi - lo))[:-1]])
    pos = np.arange(len(listed)) - start[listed]
    keep = pos < rho
    rev = np.full((hi - lo, rho), -1, i.dtype)
    rev[listed[keep], pos[keep]] = src[keep]
    return np.concatenate([i[lo:hi, :rho], rev], 1)


def _prepare(i: np.ndarray, before: np.ndarray | None, rho: int, lo: int, hi: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """A round's join lists of rows lo..hi and which of their entries are fresh."""
    join = _join_lists(i, rho, lo, hi)
    return join, _is_new(join, None if before is None else before[lo:hi])


def _merge_rows(lo: int, hi: int, k: int, *lists: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows lo..hi of several (distances, neighbours) lists of the same rows, the k nearest of all."""
    d, i = lists[0][0][lo:hi], lists[0][1][lo:hi]
    for dd, ii in lists[1:]:
        d, i = _keep_nearest(d, i, dd[lo:hi], ii[lo:hi], k)
    return d, i


# ----------------------------------------------------------------------------- the graph


def nndescent_graph(x: np.ndarray, k: int, params: NNDescentParams | None = None, use_ray: bool = True,
                    progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distances, neighbours), each (n, k) with k < n: every row's k nearest other rows found,
    ascending L2 distance. ``progress(rows)`` adds up to n over the forest and the rounds."""
    params = params or NNDescentParams()
    n = len(x)
    steps = 1 + params.max_rounds
    done = 0

    def report(share: float) -> None:
        nonlocal done
        now = min(n, int(round(share * n)))
        if progress and now > done:
            progress(now - done)
        done = max(done, now)

    t0 = time.perf_counter()
    # the faces in the order of the first tree's leaves: a block's neighbours lie close in memory
    order, x, own = _tree(np.ascontiguousarray(x, np.float32), params.leaf, np.random.default_rng(params.seed))
    seeds = [params.seed + t for t in range(1, params.trees)]
    run = _runner(use_ray, n)
    x_ref, norms_ref = run.put(x), run.put(_norms(x))
    del x  # on Ray the object store holds it: one copy fewer on the driver
    width = min(run.width, params.trees)
    shares = [(seeds[j::width], own if j == width - 1 else None) for j in range(width)]
    bounds = _blocks(n, run.width)
    trees = run.submit(_forest, [(x_ref, k, params.leaf, s, o) for s, o in shares])
    # the shares' lists merged by blocks of rows in parallel, not on the driver alone
    parts = run.map(_merge_rows, [(a, b, k, *trees) for a, b in bounds])
    del trees
    d = np.concatenate([p[0] for p in parts])
    i = np.concatenate([p[1] for p in parts])
    del parts
    report(1 / steps)
    log.debug("NN-descent forest: %d trees in %.1f s", params.trees, time.perf_counter() - t0)
    before_ref = None
    for r in range(params.max_rounds):
        i_ref = run.put(i)
        lists = run.map(_prepare, [(i_ref, before_ref, params.rho, a, b) for a, b in bounds])
        join_ref = run.put(np.concatenate([p[0] for p in lists]))
        fresh_ref = run.put(np.concatenate([p[1] for p in lists]))
        del lists
        d_ref = run.put(d)
        parts = run.map(_descend, [(x_ref, norms_ref, join_ref, fresh_ref, d_ref, i_ref, a, b, k) for a, b in bounds])
        del d_ref
        before_ref = join_ref
        d = np.concatenate([p[0] for p in parts])
        i = np.concatenate([p[1] for p in parts])
        report((2 + r) / steps)
        changed = sum(p[2] for p in parts)
        log.debug("NN-descent round %d: %d of %d entries changed, %.1f s in all", r + 1, changed, n * k,
                  time.perf_counter() - t0)
        if changed < params.delta * n * k:
            break
    run.close()
    report(1.0)
    o = np.argsort(d, 1, kind="stable")
    d = np.sqrt(np.maximum(np.take_along_axis(d, o, 1), 0)).astype(np.float32)
    i = np.take_along_axis(i, o, 1)
    # back to the caller's row numbers and order
    out_d, out_i = np.empty_like(d), np.empty_like(i)
    out_d[order] = d
    out_i[order] = np.where(i < 0, -1, order[np.where(i < 0, 0, i)])
    return out_d, out_i.astype(np.int64)


def _blocks(n: int, width: int) -> list[tuple[int, int]]:
    m = max(1, min(4 * width, math.ceil(n / 4096)))
    return [(j * n // m, (j + 1) * n // m) for j in range(m)]


class _InProcess:
    width = 1

    def put(self, value):
        return value

    def submit(self, fn, args: list[tuple]) -> list:
        return [fn(*a) for a in args]

    map = submit

    def close(self) -> None:
        pass


class _OnRay:
    """The forest and each round as Ray tasks; the embeddings go to the object store once and are
    read there without a copy (numpy arrays are zero-copy)."""

    def __init__(self):
        import ray

        from facerec.ray_utils import init_ray

        init_ray()
        self.ray = ray
        self.width = max(1, int(ray.available_resources().get("CPU", 1)))
        self._remote = {}

    def put(self, value):
        return self.ray.put(value)

    def submit(self, fn, args: list[tuple]) -> list:
        """The tasks' results in the object store (refs, for the next map's arguments)."""
        if fn not in self._remote:  # one remote function per piece, exported once
            self._remote[fn] = self.ray.remote(num_cpus=1)(fn)
        task = self._remote[fn]
        return [task.remote(*a) for a in args]

    def map(self, fn, args: list[tuple]) -> list:
        return self.ray.get(self.submit(fn, args))

    def close(self) -> None:
        self._remote.clear()


def _runner(use_ray: bool, n: int):
    return _OnRay() if use_ray and n > 4096 else _InProcess()
