"""Exact L2 top-k kernels shared by every index kind (brute force, delta buffers, re-ranking).

The gallery is kept *dimension-major* (``XT``: d x n, C-contiguous). For one query,
``q @ XT`` is then a BLAS ``sgemv`` in its streaming ("N") form, which on one core runs
about twice as fast as ``X @ q`` on the row-major (n x d) copy (7 ms vs 13-15 ms for
200k x 128 on the development machine): the kernel is bandwidth-bound and the "N" form
streams the matrix once with unit stride.

Selection uses the expansion ||q - x||^2 = ||q||^2 - 2 q.x + ||x||^2 (the ||q||^2 term is
constant per query, so it is left out of the ranking); the winners' distances are then
recomputed directly from the differences, so the float32 cancellation of the expansion
(about 1e-3 absolute for near-duplicates) never reaches the caller.
"""

from __future__ import annotations

import numpy as np

# Bound on gathered candidate tensors (queries x candidates x d) in the exact re-rank.
BLOCK_BYTES = 1 << 26
# Batch scoring: gallery columns per chunk and bytes per (queries x chunk) score block.
CHUNK_COLS = 32768
CHUNK_BYTES = 1 << 24


def exact_sq_dist(Q: np.ndarray, XT: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Squared L2 distances between each query row ``Q[i]`` and the gallery columns
    ``XT[:, cand[i, j]]``, computed from differences (no cancellation). Returns (m, c) float32."""
    m, c = cand.shape
    d = XT.shape[0]
    out = np.empty((m, c), dtype=np.float32)
    step = max(1, BLOCK_BYTES // max(1, 4 * d * c))
    for s in range(0, m, step):
        cb = cand[s : s + step]
        diff = XT[:, cb]  # (d, mb, c): gathered copy
        diff -= Q[s : s + step].T[:, :, None]
        np.einsum("dmc,dmc->mc", diff, diff, out=out[s : s + step])
    return out


def topk_from_candidates(Q: np.ndarray, XT: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-rank: the ``k`` nearest of each row's candidate positions.
    Returns (distances (m, k) float32 ascending, positions (m, k) int64)."""
    d2 = exact_sq_dist(Q, XT, cand)
    if k < d2.shape[1]:
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        d2 = np.take_along_axis(d2, part, 1)
        cand = np.take_along_axis(cand, part, 1)
    order = np.argsort(d2, axis=1, kind="stable")
    d2 = np.take_along_axis(d2, order, 1)
    pos = np.take_along_axis(cand, order, 1).astype(np.int64, copy=False)
    return np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2), pos


def brute_force_topk(Q: np.ndarray, XT: np.ndarray, x_half_sq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest gallery columns of ``XT`` (d x n) for each query row of ``Q`` (m x d).

    ``x_half_sq`` holds ||x||^2 / 2 per column: the ranking score ||x||^2/2 - q.x equals
    (||q - x||^2 - ||q||^2) / 2, so one in-place pass after the matmul suffices. ``k`` is
    clipped to n.

    One query: a single gemv over the whole gallery, then argpartition. Several queries: the
    gallery is cut into column chunks so each (queries x chunk) score block stays in cache
    while it is reduced to its k best; the chunk winners are then merged (1.3-1.6x more
    queries/s than whole-gallery blocks at 200k-1M rows on one core).
    """
    m = Q.shape[0]
    n = XT.shape[1]
    k = min(k, n)
    if m == 1:
        scores = Q @ XT
        np.subtract(x_half_sq, scores, out=scores)
        cand = _select(scores, k, 0)[1]
        return topk_from_candidates(Q, XT, cand, k)
    out_d = np.empty((m, k), dtype=np.float32)
    out_p = np.empty((m, k), dtype=np.int64)
    cols = min(n, max(CHUNK_COLS, k))
    rows = max(1, CHUNK_BYTES // (4 * cols))
    for s in range(0, m, rows):
        Qb = Q[s : s + rows]
        best_s, best_p = [], []
        for c0 in range(0, n, cols):
            scores = Qb @ XT[:, c0 : c0 + cols]
            np.subtract(x_half_sq[c0 : c0 + cols], scores, out=scores)
            sc, pos = _select(scores, k, c0)
            best_s.append(sc)
            best_p.append(pos)
        sc = np.concatenate(best_s, axis=1)
        pos = np.concatenate(best_p, axis=1)
        if k < sc.shape[1]:
            pos = np.take_along_axis(pos, np.argpartition(sc, k - 1, axis=1)[:, :k], 1)
        out_d[s : s + rows], out_p[s : s + rows] = topk_from_candidates(Qb, XT, pos, k)
    return out_d, out_p


def _select(scores: np.ndarray, k: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest scores per row (unordered) and their column positions + ``offset``."""
    w = scores.shape[1]
    if k < w:
        part = np.argpartition(scores, k - 1, axis=1)[:, :k]
        return np.take_along_axis(scores, part, 1), part.astype(np.int64, copy=False) + offset
    pos = np.broadcast_to(np.arange(offset, offset + w, dtype=np.int64), scores.shape).copy()
    return scores, pos


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-source (distances, ids) results row by row into the overall top ``k``.

    Each part is sorted by distance, but a caller may have masked rows of it (deleted ones set to
    ``inf``) after asking for more than ``k``: only a part of at most ``k`` columns is already the
    answer, a wider one is re-sorted so the masked rows fall behind the live ones."""
    if len(parts) == 1 and parts[0][0].shape[1] <= k:
        d, i = parts[0]
        return d, i
    d = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


class GalleryStore:
    """Growable dimension-major float32 storage (d x capacity) with half squared norms and ids.

    Appends amortise to O(new rows): capacity grows by half when full, so adding one image at
    a time to a 1M gallery does not copy 512 MB per call. ``XT`` is a (d x n) view whose row
    stride is the capacity, which BLAS accepts as its leading dimension.
    """

    def __init__(self, x: np.ndarray, ids: np.ndarray):
        self.dim = x.shape[1]
        self.n = 0
        self._xt = np.empty((self.dim, 0), dtype=np.float32)
        self._sq = np.empty(0, dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self.append(x, ids, exact_fit=True)

    def append(self, x: np.ndarray, ids: np.ndarray, exact_fit: bool = False) -> None:
        m = x.shape[0]
        need = self.n + m
        cap = self._xt.shape[1]
        if need > cap:
            new_cap = need if exact_fit else max(need, cap + cap // 2)
            xt = np.empty((self.dim, new_cap), dtype=np.float32)
            xt[:, : self.n] = self._xt[:, : self.n]
            sq = np.empty(new_cap, dtype=np.float32)
            sq[: self.n] = self._sq[: self.n]
            idb = np.empty(new_cap, dtype=np.int64)
            idb[: self.n] = self._ids[: self.n]
            self._xt, self._sq, self._ids = xt, sq, idb
        self._xt[:, self.n : need] = x.T
        self._sq[self.n : need] = 0.5 * np.einsum("ij,ij->i", x, x)
        self._ids[self.n : need] = ids
        self.n = need

    @property
    def XT(self) -> np.ndarray:
        return self._xt[:, : self.n]

    @property
    def half_sq(self) -> np.ndarray:
        """||x||^2 / 2 per stored row."""
        return self._sq[: self.n]

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.n]

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Row-major (m x d) float32 copy of rows ``start:stop``."""
        return np.ascontiguousarray(self._xt[:, start : self.n if stop is None else stop].T)

    def nbytes(self) -> int:
        return self._xt.nbytes + self._sq.nbytes + self._ids.nbytes

    def topk(self, q: np.ndarray, k: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over rows ``start:`` (a delta buffer); returns (distances, ids)."""
        d, pos = brute_force_topk(q, self._xt[:, start : self.n], self._sq[start : self.n], k)
        return d, self._ids[start + pos]
