"""Retrieval indexes behind one interface (:class:`Index`).

* ``exact``: brute force, one BLAS pass + argpartition (exact). ``add``: append, amortised
  O(new rows).
* ``kdtree``: scikit-learn KDTree on the full vectors (exact). ``add``: a delta buffer searched
  exactly and merged at search time; the tree is rebuilt over everything once the buffer
  exceeds ``rebuild_fraction`` (default 0.1) of the tree.
* ``kdtree_pca``: PCA to 16-d -> KDTree candidates (400 x k) -> exact re-rank (approximate;
  ``exact_fallback=True`` makes it exact). ``add``: same delta scheme, new rows projected with
  the existing PCA basis (no refit).
* ``hnsw``: hnswlib HNSW graph (approximate; ``M``, ``ef_construction``, ``ef``). ``add``:
  insert into the graph, capacity grown by half with ``resize_index``; no rebuild.

Build with :func:`build_index`, save with :meth:`Index.save` (atomic folder swap, manifest
``index.json`` with sha256 of every file, no pickle), reopen with :func:`load_index`, which
refuses another model id / embedding dimension / damaged or missing file with a message that
says how to rebuild.
"""

from facerec.index.base import INDEXES, Index, build_index, check_kinds, load_index, read_manifest
from facerec.index.exact import ExactIndex
from facerec.index.hnsw import HNSWIndex
from facerec.index.kdtree import KDTreeIndex
from facerec.index.kdtree_pca import KDTreePCAIndex

__all__ = [
    "INDEXES",
    "Index",
    "build_index",
    "check_kinds",
    "load_index",
    "read_manifest",
    "ExactIndex",
    "KDTreeIndex",
    "KDTreePCAIndex",
    "HNSWIndex",
]
