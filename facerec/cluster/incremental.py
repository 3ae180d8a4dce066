"""New faces into existing people, without re-clustering the rest.

Each new face joins the person it is closest to on average -- the smallest average squared distance
to the person's faces, ``|x - mu|^2 + var`` -- among the people of its k nearest existing faces
within the link threshold, when that average is within the merge threshold (the bar a merge of two
groups must clear in :mod:`facerec.cluster.algorithm`) and the person holds no face of its photo.
Two new faces of one photo never join one person (closest first). The new faces that join no one
are clustered among themselves (:func:`~facerec.cluster.algorithm.cluster_embeddings`) into new
people numbered after the existing ones.
"""

from __future__ import annotations

import numpy as np

from facerec.cluster.algorithm import ClusterConfig, cluster_embeddings
from facerec.errors import ConfigError


def assign_new(x_old: np.ndarray, groups_old: np.ndarray, x_new: np.ndarray, config: ClusterConfig,
               photos_old: np.ndarray | None = None, photos_new: np.ndarray | None = None) -> np.ndarray:
    """Group ids of the new faces: an existing group's id, or new ids from ``groups_old.max() + 1``."""
    from facerec.cluster.knn import knn_graph  # noqa: F401  (same index kinds)
    from facerec.index import build_index
    from facerec.index.base import as_matrix

    x_old = as_matrix(x_old, "x_old")
    x_new = as_matrix(x_new, "x_new", dim=x_old.shape[1])
    groups_old = np.asarray(groups_old, dtype=np.int64)
    if groups_old.shape != (len(x_old),) or (groups_old < 0).any():
        raise ConfigError("groups_old", f"shape {groups_old.shape}", "one group id >= 0 per existing face")
    m = len(x_new)
    out = np.full(m, -1, np.int64)
    if m == 0:
        return out
    g = int(groups_old.max()) + 1
    x64 = x_old.astype(np.float64)
    size = np.bincount(groups_old, minlength=g).astype(np.float64)
    total = np.zeros((g, x_old.shape[1]))
    np.add.at(total, groups_old, x64)
    mu = total / np.maximum(size, 1)[:, None]
    var = np.bincount(groups_old, weights=(x64 * x64).sum(1), minlength=g) / np.maximum(size, 1) - (mu * mu).sum(1)

    taken: set[tuple[int, object]] = set()  # (group, photo) pairs: a person holds one face of a photo
    if photos_old is not None:
        taken = set(zip(groups_old.tolist(), np.asarray(photos_old).tolist()))
    # without photos every new face is its own photo (ids no existing face has)
    photos_new = np.asarray(photos_new) if photos_new is not None else -1 - np.arange(m)

    k = min(config.k, len(x_old))
    # A few new faces against many old ones: an exact search (m x n distances, in cache-sized blocks)
    # costs far less than building a graph index over all the old faces (minutes at a million).
    index = build_index("exact" if min(len(x_old), m) <= 50_000 else "hnsw", x_old)
    d, nb = index.search(x_new, k)
    cand_face, cand_group, cand_cost = [], [], []
    for i in range(m):
        near = nb[i][(nb[i] >= 0) & (d[i] <= config.link)]
        for grp in np.unique(groups_old[near]):
            cost = float(((x_new[i] - mu[grp]) ** 2).sum() + var[grp])
            if cost <= config.merge ** 2:
                cand_face.append(i)
                cand_group.append(int(grp))
                cand_cost.append(cost)
    for e in np.argsort(np.asarray(cand_cost), kind="stable"):
        i, grp = cand_face[e], cand_group[e]
        if out[i] >= 0 or (grp, photos_new[i]) in taken:
            continue
        out[i] = grp
        taken.add((grp, photos_new[i]))
    rest = np.flatnonzero(out < 0)
    if len(rest):
        if len(rest) == 1:
            out[rest] = g
        else:
            sub = cluster_embeddings(x_new[rest], config, photos=photos_new[rest])
            out[rest] = g + sub.groups
    return out
