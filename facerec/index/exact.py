"""Exact (brute-force) L2 search over the whole gallery: the reference every other kind is
measured against.

One BLAS pass computes -2 q.x + ||x||^2 for all gallery rows (||q - x||^2 minus the per-query
constant ||q||^2, with ||x||^2 precomputed), ``np.argpartition`` selects the k smallest in
O(n), only those k are sorted, and their distances are recomputed from the differences (see
:mod:`facerec.index._linalg`). ``add`` appends to the storage (amortised O(new rows)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerec.index._linalg import GalleryStore
from facerec.index.base import INDEXES, Index, check_array


@dataclass(frozen=True)
class ExactParams:
    """Brute force has no parameters."""


@INDEXES.register("exact")
class ExactIndex(Index):
    kind = "exact"
    Params = ExactParams

    def _build(self, x: np.ndarray, ids: np.ndarray) -> None:
        self._store = GalleryStore(x, ids)

    @property
    def count(self) -> int:
        return self._store.n

    def ids(self) -> np.ndarray:
        return self._store.ids

    def add(self, embeddings, ids) -> None:
        """Append: no structure to update, the next search scans the new rows too."""
        x, new_ids = self._check_new(embeddings, ids)
        self._store.append(x, new_ids)

    def _search(self, q: np.ndarray, k: int):
        return self._store.topk(q, k)

    def nbytes(self) -> int:
        return self._store.nbytes()

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"embeddings": self._store.rows(), "ids": self._store.ids}

    @classmethod
    def _expected_arrays(cls) -> tuple[str, ...]:
        return ("embeddings", "ids")

    @classmethod
    def _restore(cls, params, dim: int, arrays, state, folder: Path) -> "ExactIndex":
        x = check_array(arrays, "embeddings", (None, dim), np.float32, folder)
        ids = check_array(arrays, "ids", (x.shape[0],), np.int64, folder)
        index = cls(params, dim)
        index._store = GalleryStore(x, ids)
        return index
