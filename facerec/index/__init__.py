"""Retrieval indexes behind one interface (:class:`Index`): ``exact`` (brute force),
``kdtree`` (the original study's method), ``kdtree_pca`` (PCA-reduced KD-tree + exact
re-rank) and ``hnsw`` (approximate graph search). Build with :func:`build_index`, reopen a
saved one with :func:`load_index`."""

from facerec.index.base import INDEXES, Index, build_index, load_index, read_manifest
from facerec.index.exact import ExactIndex
from facerec.index.hnsw import HNSWIndex
from facerec.index.kdtree import KDTreeIndex
from facerec.index.kdtree_pca import KDTreePCAIndex

__all__ = [
    "INDEXES",
    "Index",
    "build_index",
    "load_index",
    "read_manifest",
    "ExactIndex",
    "KDTreeIndex",
    "KDTreePCAIndex",
    "HNSWIndex",
]
