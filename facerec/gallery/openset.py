"""Open-set identification: when a 1:N search may say "same person".

A search is a 1:N question; a threshold fitted for 1:1 pairs (a false accept rate per pair) does
not hold for it: with independent impostors the chance that a search of someone absent from a
gallery of N faces meets at least one of them below the threshold is about 1 - (1 - FAR)^N.
This module measures searches in the terms of NIST's FRVT 1:N reports (Grother, Ngan & Hanaoka,
*Face Recognition Vendor Test Part 2: Identification*, NISTIR 8271):

- **FPIR(t)**, false positive identification rate: the share of *non-mated* searches (the person
  is not in the gallery) that return any candidate at distance <= t;
- **FNIR(t)**, false negative identification rate: the share of *mated* searches whose mate is not
  the rank-1 candidate at distance <= t,

at a stated gallery size N, and chooses the threshold of a gallery at a target FPIR:

1. **measured on the gallery itself** (:func:`gallery_searches`): every identity's faces searched
   against the rest of the gallery are non-mated searches of a gallery of about N faces, and each
   face searched against the others (leave-one-out) is a mated search when its identity has
   another face. The threshold is the largest distance whose measured FPIR is at most the target
   (:func:`threshold_at_fpir`), never looser than the model's 1:1 threshold at a FAR equal to the
   target (the threshold of a gallery of one face). It needs at least
   :data:`MIN_EVENTS` / target non-mated searches over at least two identities;
2. **from the model's 1:1 calibration** otherwise (a gallery too small, of one identity, or
   unlabelled; :func:`threshold_from_impostors`): the per-pair impostor distances measured by
   ``facerec calibrate`` and the independence model above, solved for the per-pair rate
   1 - (1 - target)^(1/N). Impostors of one gallery are not independent (faces of one person
   sit together), so on data like the calibration's this over-counts false positives; carried
   to another population of faces it can miss the target either way, so a labelled gallery
   measures itself whenever it has enough searches.

Torch-free: a Retriever replica runs it on the gallery it serves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from facerec.errors import ConfigError
from facerec.models.calibration import thresholds

# A quantile at rate r from n searches rests on about r * n events; fewer than this many and the
# gallery's own measurement is too noisy to choose with (the fallback decides instead).
MIN_EVENTS = 10
# Searches sampled from a big gallery for the measurement (seeded): enough for 1e-3 at MIN_EVENTS.
MAX_SEARCHES = 20_000
DEFAULT_TARGET_FPIR = 1e-2

# search(queries (m, d) float32, k) -> (distances (m, k), positions (m, k) into the embeddings;
# -1 where fewer than k exist), each row sorted by distance.
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class OpenSetSearches:
    """The outcome of every search of one gallery, enough to compute FPIR and FNIR at any
    threshold: ``nonmated`` (nearest non-mate's distance per non-mated search), ``mated_distance``
    and ``mated_correct`` (rank-1 distance of each mated search, and whether rank 1 is a mate)."""

    nonmated: np.ndarray
    mated_distance: np.ndarray
    mated_correct: np.ndarray
    gallery_size: int
    identities: int

    def fpir(self, t: float) -> float:
        return fpir(self.nonmated, t)

    def fnir(self, t: float) -> float:
        return fnir(self.mated_distance, self.mated_correct, t)


def fpir(nonmated: np.ndarray, t: float) -> float:
    """Share of non-mated searches with any candidate at distance <= ``t``."""
    nonmated = np.asarray(nonmated)
    return float(np.mean(nonmated <= t)) if len(nonmated) else float("nan")


def fnir(mated_distance: np.ndarray, mated_correct: np.ndarray, t: float) -> float:
    """Share of mated searches whose rank-1 candidate is not a mate at distance <= ``t``."""
    mated_distance = np.asarray(mated_distance)
    if not len(mated_distance):
        return float("nan")
    return float(1.0 - np.mean(np.asarray(mated_correct, bool) & (mated_distance <= t)))


def check_target(target_fpir: Any, name: str = "target_fpir") -> float:
    if isinstance(target_fpir, bool) or not isinstance(target_fpir, (int, float)) or not 0 < float(target_fpir) < 1:
        raise ConfigError(name, target_fpir, "a share of non-mated searches strictly between 0 and 1, e.g. 0.01")
    return float(target_fpir)


def threshold_at_fpir(nonmated: np.ndarray, target: float) -> float:
    """The largest threshold whose FPIR over ``nonmated`` is at most ``target``: half-way
    between the m-th and (m+1)-th smallest non-mated distance, m = floor(target * n) (below the
    smallest when m = 0)."""
    target = check_target(target)
    d = np.sort(np.asarray(nonmated, dtype=np.float64))
    if not len(d):
        raise ConfigError("nonmated", "[]", "at least one non-mated search")
    m = int(math.floor(target * len(d) + 1e-9))
    if m >= len(d):
        return float(d[-1])
    if m == 0:
        return float(np.nextafter(d[0], -np.inf))
    return float((d[m - 1] + d[m]) / 2.0)


def det_curve(searches: OpenSetSearches, points: int = 200) -> dict[str, np.ndarray]:
    """FPIR and FNIR over thresholds spanning the non-mated distances (a DET plot's data)."""
    d = np.sort(searches.nonmated)
    qs = np.unique(np.concatenate([d[: min(len(d), points)], np.quantile(d, np.linspace(0, 1, points))]))
    return {"threshold": qs, "fpir": np.array([searches.fpir(t) for t in qs]),
            "fnir": np.array([searches.fnir(t) for t in qs])}


def fnir_at_fpir(searches: OpenSetSearches, targets=(1e-1, 1e-2, 1e-3)) -> list[dict[str, Any]]:
    """FNIR at each FPIR target, with the threshold; ``resolvable`` false when the searches are
    too few to measure that rate (fewer than MIN_EVENTS / target)."""
    out = []
    n = len(searches.nonmated)
    for target in targets:
        ok = n >= MIN_EVENTS / target
        t = threshold_at_fpir(searches.nonmated, target) if n else None
        out.append({"fpir_target": target, "resolvable": bool(ok), "threshold": t,
                    "fpir": searches.fpir(t) if t is not None else None,
                    "fnir": searches.fnir(t) if t is not None else None,
                    "gallery_size": searches.gallery_size, "nonmated_searches": n,
                    "mated_searches": int(len(searches.mated_distance))})
    return out


def exact_search(embeddings: np.ndarray, block: int = 1024) -> SearchFn:
    """Exact Euclidean k-NN over ``embeddings`` (blocked, float64 accumulation of the norms)."""
    x = np.asarray(embeddings, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x)

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(q, dtype=np.float32)
        k = min(k, len(x))
        ds, ids = [], []
        for s in range(0, len(q), block):
            qq = q[s:s + block]
            d2 = sq[None, :] - 2.0 * (qq @ x.T) + np.einsum("ij,ij->i", qq, qq)[:, None]
            part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(x) else np.tile(np.arange(len(x)), (len(qq), 1))
            pd = np.take_along_axis(d2, part, 1)
            order = np.argsort(pd, axis=1, kind="stable")
            ds.append(np.sqrt(np.maximum(np.take_along_axis(pd, order, 1), 0.0)))
            ids.append(np.take_along_axis(part, order, 1))
        return np.concatenate(ds).astype(np.float32), np.concatenate(ids).astype(np.int64)

    return search


def gallery_searches(embeddings: np.ndarray, identities: np.ndarray, search: SearchFn | None = None,
                     max_searches: int | None = MAX_SEARCHES, seed: int = 0) -> OpenSetSearches:
    """Search the gallery with its own faces (a seeded sample of ``max_searches`` of them when
    bigger): for each, the nearest face of another identity (a non-mated search of the gallery
    less that identity) and the nearest other face (a leave-one-out mated search, counted when
    the identity has another face). ``search`` defaults to exact search; a gallery's index may
    stand in (it asks for more neighbours until every answer holds another identity)."""
    # with a search of its own, ``embeddings`` may be lazy (anything indexable by positions)
    x = embeddings if search is not None else np.asarray(embeddings, dtype=np.float32)
    ids = np.asarray(identities, dtype=np.int64)
    n = len(x)
    if len(ids) != n:
        raise ConfigError("identities", f"{len(ids)} labels", f"one per embedding ({n})")
    search = search or exact_search(x)
    rows = np.arange(n)
    if max_searches is not None and n > max_searches:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_searches, replace=False))
    uniq, counts = np.unique(ids, return_counts=True)
    size_of = dict(zip(uniq.tolist(), counts.tolist()))
    nonmated = np.full(len(rows), np.inf)
    mated_d = np.full(len(rows), np.inf)
    mated_ok = np.zeros(len(rows), bool)
    has_mate = np.array([size_of[int(ids[r])] > 1 for r in rows], bool)
    todo = np.arange(len(rows))
    k = min(n, max(8, min(64, int(counts.max()) + 2)) if n else 0)
    while len(todo) and k > 0:
        d, pos = search(np.asarray(x[rows[todo]], dtype=np.float32), k)
        done = []
        for j, (drow, prow) in enumerate(zip(d, pos)):
            i = todo[j]
            me = rows[i]
            valid = (prow >= 0) & (prow != me)
            pr, dr = prow[valid], drow[valid]
            if not np.isfinite(mated_d[i]) and len(pr):
                mated_d[i] = dr[0]
                mated_ok[i] = ids[pr[0]] == ids[me]
            other = ids[pr] != ids[me]
            if other.any():
                nonmated[i] = dr[int(np.argmax(other))]
                done.append(j)
            elif k >= n:
                done.append(j)  # one identity only: no non-mated search exists
        todo = np.delete(todo, done)
        if k >= n:
            break
        k = min(n, k * 4)
    keep = np.isfinite(nonmated)
    return OpenSetSearches(nonmated=nonmated[keep], mated_distance=mated_d[has_mate], mated_correct=mated_ok[has_mate],
                           gallery_size=n, identities=len(uniq))


def impostor_curve(distances: np.ndarray, pairs: int | None = None, points: int = 120) -> dict[str, Any]:
    """A compact record of impostor (different-person) pair distances for a calibration: the
    distance at which the per-pair false accept rate is each of ``points`` rates spaced evenly on
    a log scale from one pair (1 / pairs) to one half. ``distances`` may be only the smallest ones
    when ``pairs`` says how many there were in all."""
    d = np.sort(np.asarray(distances, dtype=np.float64))
    pairs = int(pairs if pairs is not None else len(d))
    if pairs < 1 or not len(d):
        raise ConfigError("distances", "[]", "at least one impostor pair distance")
    far = np.unique(np.geomspace(1.0 / pairs, 0.5, points))
    idx = np.minimum(np.ceil(far * pairs).astype(np.int64) - 1, len(d) - 1)
    far = far[np.ceil(far * pairs) <= len(d)]  # rates the kept tail covers
    return {"pairs": pairs, "far": [float(f) for f in far], "distance": [round(float(d[i]), 6) for i in idx[:len(far)]]}


def threshold_from_impostors(impostors: dict[str, Any], n: int, target: float) -> dict[str, Any] | None:
    """The fallback threshold for a gallery of ``n`` faces from a 1:1 calibration's impostor
    curve (:func:`impostor_curve`): the distance whose per-pair false accept rate is
    1 - (1 - target)^(1/n), interpolated on log rate. Below the curve's resolution (fewer than one
    pair expected in the calibration's data) its smallest impostor distance, made 2 % tighter, is
    used and ``resolved`` says so. None without impostor data."""
    target = check_target(target)
    if not impostors or not impostors.get("far") or not impostors.get("distance"):
        return None
    far = np.log(np.asarray(impostors["far"], dtype=np.float64))
    dist = np.asarray(impostors["distance"], dtype=np.float64)
    per_pair = -math.expm1(math.log1p(-target) / max(1, int(n)))
    if math.log(per_pair) < far[0]:
        return {"threshold": float(dist[0]) * 0.98, "per_pair_far": per_pair, "resolved": False}
    return {"threshold": float(np.interp(math.log(per_pair), far, dist)), "per_pair_far": per_pair,
            "resolved": bool(math.log(per_pair) <= far[-1])}


def one_to_one_threshold(impostors: dict[str, Any] | None, far: float) -> float | None:
    """The 1:1 threshold at per-pair rate ``far`` from impostor data (a gallery of one face)."""
    out = threshold_from_impostors(impostors or {}, 1, far)
    return None if out is None else out["threshold"]


def gallery_threshold(embeddings: np.ndarray | None, identities: np.ndarray | None, target: float,
                      impostors: dict[str, Any] | None = None, search: SearchFn | None = None,
                      labelled: bool = True, max_searches: int | None = MAX_SEARCHES) -> dict[str, Any]:
    """The "same person" threshold of a gallery at ``target`` FPIR, and how it was chosen:

    ``{"threshold", "target_fpir", "gallery_size", "method", "nonmated_searches", "identities",
    "measured_fpir"}`` where ``method`` is ``"gallery"`` (measured on the gallery's own non-mated
    searches), ``"calibration"`` (the model's 1:1 impostor curve for N faces: a gallery of one
    identity, too small, or ``labelled=False``) or ``"none"`` (neither: no decision; the
    threshold is null)."""
    target = check_target(target)
    n = 0 if embeddings is None else int(len(embeddings))
    cap = one_to_one_threshold(impostors, target)  # a gallery of one face: the loosest any gallery may get
    out = {"target_fpir": target, "gallery_size": n, "nonmated_searches": 0,
           "identities": int(len(np.unique(identities))) if identities is not None and n else 0, "measured_fpir": None}
    if n and labelled and out["identities"] >= 2:
        found = gallery_searches(embeddings, identities, search=search, max_searches=max_searches)
        out["nonmated_searches"] = len(found.nonmated)
        if len(found.nonmated) >= MIN_EVENTS / target:
            t = threshold_at_fpir(found.nonmated, target)
            if cap is not None:
                t = min(t, cap)
            return {**out, "threshold": t, "method": "gallery", "measured_fpir": found.fpir(t)}
    fallback = threshold_from_impostors(impostors or {}, max(1, n), target)
    if fallback is None:
        return {**out, "threshold": None, "method": "none"}
    return {**out, "threshold": fallback["threshold"], "method": "calibration",
            "per_pair_far": fallback["per_pair_far"], "resolved": fallback["resolved"]}


class _LiveEmbeddings:
    """A snapshot's live embeddings of one model, read only at the positions asked for."""

    def __init__(self, snapshot, model: str, row_ids: np.ndarray):
        self.snapshot, self.model, self.row_ids = snapshot, model, row_ids

    def __len__(self) -> int:
        return len(self.row_ids)

    def __getitem__(self, positions) -> np.ndarray:
        return self.snapshot.embeddings_of(self.model, self.row_ids[positions])


def snapshot_threshold(snapshot, model: str, target: float, impostors: dict[str, Any] | None = None,
                       max_searches: int | None = MAX_SEARCHES) -> dict[str, Any]:
    """:func:`gallery_threshold` of a served gallery version (a
    :class:`~facerec.gallery.GallerySnapshot`), searched through its own index; the result also
    names the ``gallery_version`` it was measured on."""
    row_ids, identities = snapshot.live_rows()

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, rid = snapshot.neighbours(model, q, k)
        pos = np.searchsorted(row_ids, np.maximum(rid, 0))
        pos = np.where((rid >= 0) & (pos < len(row_ids)), pos, -1)
        return d, pos

    labelled = bool(snapshot.manifest.get("labelled", True))
    out = gallery_threshold(_LiveEmbeddings(snapshot, model, row_ids) if len(row_ids) else None, identities, target,
                            impostors, search=search, labelled=labelled, max_searches=max_searches)
    return {**out, "gallery_version": int(snapshot.version)}


def impostors_of(calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """The impostor curve of a model's 1:1 calibration: its ``impostors`` record, or, for a
    calibration made before it was stored, one drawn through its operating points (far,
    threshold) -- coarser, so the fallback of a big gallery lands below its resolution and
    takes the tightened smallest threshold."""
    if not calibration:
        return None
    if calibration.get("impostors"):
        return calibration["impostors"]
    points = sorted(thresholds(calibration).items())
    if not points:
        return None
    return {"pairs": None, "far": [f for f, _ in points], "distance": [t for _, t in points], "from": "operating_points"}
