"""Faces -> people: shared-neighbour links, then average-linkage merges, never two faces of one photo.

1. **Links.** Every face and each of its ``k`` nearest neighbours (:mod:`facerec.cluster.knn`) are
   linked when their distance is at most the link threshold *and* they share at least ``snn`` of
   their neighbourhoods (each face's k neighbours and itself). A distance alone chains strangers
   together through one look-alike (single linkage: on celeba-sample BCubed precision falls to 0.49
   at dlib's 0.5); a look-alike rarely shares the neighbourhood too. Linked faces form groups
   (union-find, by ascending distance where a cannot-link must be checked).
4. **Merges.** Groups joined by any k-NN edge under the link threshold are merged while their
   average squared pairwise distance, ``|mu_a - mu_b|^2 + var_a + var_b`` (exact from each group's
   mean and spread; no pair list), is at most the merge threshold squared: average linkage in rounds,
   each group merged at most once per round, closest pairs first.
2. **Splits** (between 1 and 2, when ``split`` is set). A chain of links can join tight groups of
   different people through a few look-alike pairs: in a dense region of faces (on lfw-sample, people
   the model separates poorly), neighbourhoods overlap and shared neighbours do not stop it. Each
   linked group is split along its average-linkage dendrogram (exact, within the group) at every node
   whose two sides are on average farther apart than ``split`` -- unless the sides are held together
   by at least ``split_links`` x (the smaller side's size) links: one person photographed in very
   different conditions is a wide group joined by many links, strangers are joined by a few. A group
   of more than ``split_max`` faces is left as it is (its exact dendrogram would cost O(m^2)); the
   stats count it.
5. **Cannot-link.** Two faces of one photo are never one person: a link or merge that would put two
   faces of a photo together is skipped (``photos`` gives each face its photo).

Confidence of a face: ``1 - rms / merge`` clipped to [0, 1], ``rms`` the root-mean-square distance to
the other faces of its person (0 for a face on its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from facerec.errors import ConfigError


@dataclass
class ClusterConfig:
    """``link``/``merge``: L2 thresholds (:mod:`facerec.cluster.thresholds`); ``k``: neighbours per face;
    ``snn``: share of the neighbourhood two linked faces must have in common; ``split``: the L2
    average linkage above which a linked group is split unless ``split_links`` x (smaller side)
    links hold it (None: no split stage); ``split_max``: larger groups are not split; ``index``: the
    how the k-NN graph is built (``auto``: exact up to 50k faces, ``nndescent`` beyond;
    or an index kind); ``min_faces``:
    people with fewer faces are reported as unassigned."""

    link: float
    merge: float
    k: int = 15
    snn: float = 0.6
    split: float | None = None
    split_links: float = 2.0
    split_max: int = 5_000
    index: str = "auto"
    min_faces: int = 2
    use_ray: bool = True

    def __post_init__(self):
        from facerec.cluster.knn import choose_kind

        checks = {
            "link": (self._num(self.link) and self.link > 0, "a positive L2 distance"),
            "merge": (self._num(self.merge) and self.merge > 0, "a positive L2 distance"),
            "k": (self._int(self.k) and 1 <= self.k <= 256, "an integer in [1, 256] (neighbours per face)"),
            "snn": (self._num(self.snn) and 0 <= self.snn <= 1, "a share in [0, 1] of shared neighbours"),
            "min_faces": (self._int(self.min_faces) and self.min_faces >= 1, "an integer >= 1"),
            "split": (self.split is None or (self._num(self.split) and self.split > 0),
                      "None (no split stage) or a positive L2 distance"),
            "split_links": (self._num(self.split_links) and self.split_links >= 0,
                            "a number >= 0 of links per face of the smaller side that keep a group whole"),
            "split_max": (self._int(self.split_max) and self.split_max >= 3, "an integer >= 3 (faces)"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ConfigError(name, getattr(self, name), expected)
        choose_kind(self.index, 1)

    @staticmethod
    def _num(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float, np.floating)) and np.isfinite(v)

    @staticmethod
    def _int(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, np.integer))


@dataclass
class Clustering:
    """``labels``: person index per face (0 = the most faces), -1 for a face in a person of fewer than
    ``min_faces``; ``groups``: the cluster of every face before that cut (never -1);
    ``confidence`` per face; ``stats``: counts and seconds per stage."""

    labels: np.ndarray
    groups: np.ndarray
    confidence: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- cannot-link


class _Photos:
    """Which faces share a photo; only those faces can ever conflict."""

    def __init__(self, photos: np.ndarray | None, n: int):
        self.codes = None
        if photos is not None:
            photos = np.asarray(photos)
            if photos.shape != (n,):
                raise ConfigError("photos", f"shape {photos.shape}", f"one photo key per face ({n})")
            codes = np.unique(photos, return_inverse=True)[1]
            shared = np.bincount(codes)[codes] > 1
            if shared.any():
                self.codes = np.where(shared, codes, -1)

    @property
    def any(self) -> bool:
        return self.codes is not None

    def sets(self, labels: np.ndarray) -> dict[int, set]:
        """{group: photos of its faces that share a photo}, only for groups that hold such faces."""
        out: dict[int, set] = {}
        if self.codes is None:
            return out
        for face in np.flatnonzero(self.codes >= 0):
            out.setdefault(int(labels[face]), set()).add(int(self.codes[face]))
        return out

    def violations(self, labels: np.ndarray) -> int:
        if self.codes is None:
            return 0
        m = self.codes >= 0
        pairs = np.unique(np.stack([labels[m], self.codes[m]]), axis=1, return_counts=True)[1]
        return int((pairs > 1).sum())


# --------------------------------------------------------------------------- stage 1: links


def _shared(nbr: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Share of common members of the neighbourhoods (self + k neighbours) of faces a[e] and b[e]."""
    n, k = nbr.shape
    hood = np.concatenate([np.arange(n)[:, None], nbr], axis=1)
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), chunk):
        ha, hb = hood[a[s:s + chunk]], hood[b[s:s + chunk]]
        common = (ha[:, :, None] == hb[:, None, :]) & (ha[:, :, None] >= 0)
        out[s:s + chunk] = common.any(axis=2).sum(axis=1) / (k + 1)
    return out


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _links(n: int, a: np.ndarray, b: np.ndarray, d: np.ndarray, photos: _Photos) -> np.ndarray:
    """Groups of the linked faces (connected components), splitting by cannot-link where needed."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    if not photos.any or not photos.violations(labels):
        return labels
    # Only the components holding two faces of one photo are redone, edge by edge, closest first.
    bad = np.zeros(labels.max() + 1, bool)
    m = photos.codes >= 0
    lab_code = np.stack([labels[m], photos.codes[m]])
    uniq, counts = np.unique(lab_code, axis=1, return_counts=True)
    bad[uniq[0, counts > 1]] = True
    parent = np.arange(n)
    members: dict[int, set] = {}
    for face in np.flatnonzero(bad[labels] & m):
        members[face] = {int(photos.codes[face])}
    sel = np.flatnonzero(bad[labels[a]])
    for e in sel[np.argsort(d[sel], kind="stable")]:
        ra, rb = _find(parent, int(a[e])), _find(parent, int(b[e]))
        if ra == rb:
            continue
        pa, pb = members.get(ra, set()), members.get(rb, set())
        if pa & pb:
            continue
        parent[rb] = ra
        if pb:
            members[ra] = pa | pb
    roots = np.array([_find(parent, i) for i in range(n)])
    out = labels.copy()
    redo = bad[labels]
    out[redo] = labels.max() + 1 + np.unique(roots[redo], return_inverse=True)[1]
    return np.unique(out, return_inverse=True)[1]


# --------------------------------------------------------------------------- stage 2: splits


def _split_one(x: np.ndarray, ea: np.ndarray, eb: np.ndarray, threshold: float, min_links: float) -> list[np.ndarray]:
    """The parts of one group (faces ``x``, links ``ea``-``eb`` in local numbering)."""
    from scipy.cluster.hierarchy import linkage

    m = len(x)
    z = linkage(x.astype(np.float64), method="average")
    if z[-1, 2] <= threshold:  # the root is the widest node of average linkage: nothing to split
        return [np.arange(m)]

    def leaves(node: int) -> np.ndarray:
        out, stack = [], [node]
        while stack:  # iterative: a chain-shaped dendrogram is m levels deep
            v = stack.pop()
            if v < m:
                out.append(v)
            else:
                stack += [int(z[v - m, 1]), int(z[v - m, 0])]
        return np.array(out)

    parts, todo = [], [2 * m - 2]
    side = np.zeros(m, np.int8)
    while todo:
        node = todo.pop()
        if node < m or z[node - m, 2] <= threshold:
            parts.append(leaves(node))
            continue
        left, right = int(z[node - m, 0]), int(z[node - m, 1])
        a, b = leaves(left), leaves(right)
        side[:] = 0
        side[a], side[b] = 1, 2
        across = int(((side[ea] * side[eb]) == 2).sum())
        if across >= min_links * min(len(a), len(b)):
            parts.append(leaves(node))
        else:
            todo += [right, left]
    return parts


def _split(x: np.ndarray, groups: np.ndarray, a: np.ndarray, b: np.ndarray, config: "ClusterConfig"
           ) -> tuple[np.ndarray, int, int]:
    """Groups split by :func:`_split_one`; (groups, groups split, groups too large to try)."""
    sizes = np.bincount(groups)
    inside = groups[a] == groups[b]
    # each pair of faces counts once, whichever of them has the other among its neighbours
    a, b = np.unique(np.stack([np.minimum(a[inside], b[inside]), np.maximum(a[inside], b[inside])]), axis=1)
    order = np.argsort(groups[a], kind="stable")
    a, b = a[order], b[order]
    bounds = np.searchsorted(groups[a], np.arange(len(sizes) + 1))
    members = np.argsort(groups, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    local = np.empty(len(groups), np.int64)
    out, nxt, split, skipped = groups.copy(), len(sizes), 0, 0
    for g in np.flatnonzero(sizes > 2):
        if sizes[g] > config.split_max:
            skipped += 1
            continue
        idx = members[starts[g]:starts[g + 1]]
        local[idx] = np.arange(len(idx))
        ea, eb = local[a[bounds[g]:bounds[g + 1]]], local[b[bounds[g]:bounds[g + 1]]]
        parts = _split_one(x[idx], ea, eb, config.split, config.split_links)
        if len(parts) > 1:
            split += 1
            for part in parts[1:]:
                out[idx[part]] = nxt
                nxt += 1
    return np.unique(out, return_inverse=True)[1], split, skipped


# --------------------------------------------------------------------------- stage 3: merges


def _merge(x: np.ndarray, labels: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float,
           photos: _Photos) -> tuple[np.ndarray, int]:
    """Average-linkage merges of groups joined by an edge (a, b); returns labels and rounds."""
    n_groups = int(labels.max()) + 1
    x64 = x.astype(np.float64)
    size = np.bincount(labels, minlength=n_groups).astype(np.float64)
    total = np.zeros((n_groups, x.shape[1]))
    np.add.at(total, labels, x64)
    sq = np.bincount(labels, weights=(x64 * x64).sum(1), minlength=n_groups)
    parent = np.arange(n_groups)
    sets = photos.sets(labels)
    limit = threshold * threshold
    rounds = 0
    ga, gb = labels[a], labels[b]
    while True:
        ga, gb = parent[ga], parent[gb]
        keep = ga != gb
        ga, gb = ga[keep], gb[keep]
        if not len(ga):
            break
        pairs = np.unique(np.stack([np.minimum(ga, gb), np.maximum(ga, gb)]), axis=1)
        ga, gb = pairs[0], pairs[1]
        mu_a, mu_b = total[ga] / size[ga, None], total[gb] / size[gb, None]
        var_a = sq[ga] / size[ga] - (mu_a * mu_a).sum(1)
        var_b = sq[gb] / size[gb] - (mu_b * mu_b).sum(1)
        cost = ((mu_a - mu_b) ** 2).sum(1) + var_a + var_b
        ok = cost <= limit
        if not ok.any():
            break
        rounds += 1
        used: set = set()
        merged = 0
        for i in np.flatnonzero(ok)[np.argsort(cost[ok], kind="stable")]:
            p, q = int(ga[i]), int(gb[i])
            if p in used or q in used:
                continue
            sp, sq_ = sets.get(p), sets.get(q)
            if sp and sq_ and sp & sq_:
                continue
            used.update((p, q))
            parent[q] = p
            size[p] += size[q]
            total[p] += total[q]
            sq[p] += sq[q]
            if sq_:
                sets[p] = (sp or set()) | sq_
            merged += 1
        if not merged:
            break
        # one level of parent links per round: flatten so parent[] is always a root
        while True:
            nxt = parent[parent]
            if (nxt == parent).all():
                break
            parent = nxt
        ga, gb = ga[ok | ~ok], gb[ok | ~ok]
    while True:
        nxt = parent[parent]
        if (nxt == parent).all():
            break
        parent = nxt
    return parent[labels], rounds


# --------------------------------------------------------------------------- the whole


def order_by_size(groups: np.ndarray) -> np.ndarray:
    """Relabel groups 0..g-1 by size, largest first (ties: the group of the lowest face index)."""
    uniq, first, inv, counts = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inv]


def confidences(x: np.ndarray, groups: np.ndarray, merge: float) -> np.ndarray:
    """``1 - rms / merge`` clipped to [0, 1], rms the RMS distance to the other faces of the group."""
    x64 = x.astype(np.float64)
    g = int(groups.max()) + 1
    size = np.bincount(groups, minlength=g).astype(np.float64)
    total = np.zeros((g, x.shape[1]))
    np.add.at(total, groups, x64)
    mu = total / size[:, None]
    sq = np.bincount(groups, weights=(x64 * x64).sum(1), minlength=g)
    var = sq / size - (mu * mu).sum(1)
    m = size[groups]
    own = ((x64 - mu[groups]) ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt(np.maximum(m * (own + var[groups]) / (m - 1), 0))
    conf = np.clip(1.0 - rms / merge, 0.0, 1.0)
    return np.where(m > 1, conf, 0.0).astype(np.float32)


def cluster_embeddings(x: np.ndarray, config: ClusterConfig, photos: np.ndarray | None = None,
                       knn: tuple[np.ndarray, np.ndarray] | None = None,
                       progress: Callable[[int], None] | None = None) -> Clustering:
    """Cluster embeddings ``x`` (n, d) into people (see the module docstring). ``photos``: each face's
    photo (cannot-link); ``knn``: a precomputed (distances, neighbours) graph, else built here."""
    import time

    from facerec.cluster.knn import knn_graph
    from facerec.index.base import as_matrix

    x = as_matrix(x, "embeddings")
    n = len(x)
    if n == 0:
        raise ConfigError("embeddings", "0 rows", "at least one face to cluster")
    cannot = _Photos(photos, n)
    t0 = time.perf_counter()
    dist, nbr = knn if knn is not None else knn_graph(x, config.k, config.index, config.use_ray, progress)
    dist, nbr = dist[:, :config.k], nbr[:, :config.k]
    t1 = time.perf_counter()
    rows = np.repeat(np.arange(n), nbr.shape[1])
    cols, dd = nbr.ravel(), dist.ravel()
    near = (cols >= 0) & (dd <= config.link)
    a, b, dd = rows[near], cols[near], dd[near]
    strong = _shared(nbr, a, b) >= config.snn
    groups = _links(n, a[strong], b[strong], dd[strong], cannot)
    links_groups = int(groups.max()) + 1
    split = skipped = 0
    if config.split is not None:
        groups, split, skipped = _split(x, groups, a[strong], b[strong], config)
    t2 = time.perf_counter()
    groups, rounds = _merge(x, groups, a, b, config.merge, cannot)
    groups = order_by_size(groups)
    t3 = time.perf_counter()
    conf = confidences(x, groups, config.merge)
    sizes = np.bincount(groups)
    labels = np.where(sizes[groups] >= config.min_faces, groups, -1)
    stats = {"faces": n, "edges_under_link": int(len(a)), "links": int(strong.sum()), "groups_after_links": links_groups,
             "groups_split": split, "groups_too_large_to_split": skipped,
             "merge_rounds": rounds, "clusters": int(len(sizes)), "people": int((sizes >= config.min_faces).sum()),
             "unassigned": int((labels < 0).sum()), "cannot_link_violations": cannot.violations(groups),
             "seconds": {"knn": round(t1 - t0, 3), "links": round(t2 - t1, 3), "merges": round(t3 - t2, 3)}}
    return Clustering(labels=labels, groups=groups, confidence=conf, stats=stats)
