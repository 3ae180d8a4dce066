"""The k-nearest-neighbour graph of a set of embeddings.

``auto`` searches exactly up to :data:`EXACT_UP_TO` rows (one BLAS pass per block beats any
approximate method there) and builds the graph by NN-descent above (:mod:`facerec.cluster.nndescent`:
n log n, where an HNSW index's build and search grew 1.5x faster than n log n from 100k to 1M rows).
Any of the gallery's index kinds can be asked for by name instead: the index is built once on the
driver and put in Ray's object store; a pool of searcher actors, one per core, each loads it once and
searches blocks of queries on one core. An actor rather than a task per block: an index is not
zero-copy, so a task per block would copy the whole index once per block -- n / block copies of an
n-row index, which grows as n squared. The same code path for 1,000 faces and for a million embeddings.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from facerec.errors import ConfigError

EXACT_UP_TO = 50_000  # "auto": exact up to here, NN-descent above
NNDESCENT = "nndescent"  # the graph built directly rather than searched in an index
MIN_BLOCK = 2_048     # queries per Ray task: fewer and the task overhead dominates


def choose_kind(kind: str, n: int) -> str:
    from facerec.index import INDEXES

    if kind == "auto":
        return "exact" if n <= EXACT_UP_TO else NNDESCENT
    if kind == NNDESCENT:
        return kind
    if kind not in INDEXES.names():
        raise ConfigError("index kind", kind, f"one of {graph_kinds()} (how the k-NN graph is built)")
    return kind


def graph_kinds() -> list[str]:
    """The names ``knn_graph`` takes: ``auto``, ``nndescent`` and every index kind."""
    from facerec.index import INDEXES

    return ["auto", NNDESCENT, *INDEXES.names()]


class _Searcher:
    """One core's share of the queries, against its own copy of the index."""

    def __init__(self, index):
        from threadpoolctl import threadpool_limits

        self.index = index
        self.index.set_num_threads(1)  # one actor per core: the actors are the parallelism
        self._limits = threadpool_limits(1)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(q, k)


def _searchers(index, n_blocks: int) -> list:
    import ray

    from facerec.ray_utils import init_ray

    init_ray()
    cores = max(1, int(ray.available_resources().get("CPU", 1)))
    ref = ray.put(index)
    actor = ray.remote(num_cpus=1)(_Searcher)
    return [actor.remote(ref) for _ in range(min(cores, n_blocks))]


def knn_graph(x: np.ndarray, k: int, kind: str = "auto", use_ray: bool = True,
              progress: Callable[[int], None] | None = None, index_params: dict | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(distances, neighbours), each (n, k'): every row's k' = min(k, n - 1) nearest other rows,
    ascending L2 distance; -1 / inf where an approximate index found fewer. ``progress(rows)`` is
    called as blocks finish."""
    from facerec.index import build_index

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError("k", k, "an integer >= 1 (neighbours per face, e.g. 15)")
    kk = min(k, n - 1)
    if kk < 1:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    kind = choose_kind(kind, n)
    params = dict(index_params or {})
    if kind == NNDESCENT:
        from facerec.cluster.nndescent import NNDescentParams, nndescent_graph

        return nndescent_graph(x, kk, NNDescentParams(**params), use_ray, progress)
    if kind == "hnsw":
        params.setdefault("ef", max(64, 4 * (kk + 1)))
    index = build_index(kind, x, np.arange(n, dtype=np.int64), **params)
    n_blocks = max(1, math.ceil(n / MIN_BLOCK))
    bounds = [(i * n // n_blocks, (i + 1) * n // n_blocks) for i in range(n_blocks)]
    if use_ray and n_blocks > 1:
        import ray

        pool = _searchers(index, n_blocks)
        todo = list(bounds)
        pending = {}
        parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        try:
            for actor in pool:  # one block in flight per actor; the next goes to whichever finishes
                a, b = todo.pop(0)
                pending[actor.search.remote(x[a:b], kk + 1)] = (a, b, actor)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                a, b, actor = pending.pop(done[0])
                parts[a] = ray.get(done[0])
                if todo:
                    c, e = todo.pop(0)
                    pending[actor.search.remote(x[c:e], kk + 1)] = (c, e, actor)
                if progress:
                    progress(b - a)
        finally:  # a failed search (or Ctrl-C) must not leave the actors holding their cores
            for actor in pool:
                ray.kill(actor)
        results = [parts[a] for a, _ in bounds]
    else:
        results = []
        for a, b in bounds:
            results.append(index.search(x[a:b], kk + 1))
            if progress:
                progress(b - a)
    d = np.concatenate([r[0] for r in results])
    i = np.concatenate([r[1] for r in results])
    return _drop_self(d, i, kk)


def _drop_self(d: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's own id out of its k + 1 results (it is not always first: duplicates tie at 0)."""
    n = len(i)
    own = i == np.arange(n)[:, None]
    # rows where the index missed the query itself: drop the last (farthest) result instead
    missing = ~own.any(axis=1)
    own[missing, -1] = True
    keep = ~own
    d2 = d[keep].reshape(n, -1)[:, :k]
    i2 = i[keep].reshape(n, -1)[:, :k]
    i2 = np.where(i2 < 0, -1, i2)
    d2 = np.where(i2 < 0, np.inf, d2).astype(np.float32)
    return d2, i2.astype(np.int64)
