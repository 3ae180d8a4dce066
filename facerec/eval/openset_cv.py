"""Open-set (1:N) figures of a labelled face set, cross-validated by identity: what a gallery's
"same person" threshold (:func:`facerec.gallery.openset.gallery_threshold`, the served rule) does
for people who were not used to choose it.

For each identity fold ``f`` (the folds of ``facerec calibrate``; one identity in one fold):

- the *gallery* is made of people of the other folds: all of them (``"all"``), or a seeded draw
  of a share of all the set's people (``"tenth"``: a tenth), so its size N is stated;
- its threshold at each target FPIR is chosen by ``gallery_threshold`` on that gallery alone (its
  own non-mated searches; where too few, the fallback from a 1:1 impostor curve that
  ``impostors_of(f)`` gives without fold ``f``'s pairs), or with ``labelled=False`` by the
  fallback alone;
- **FPIR** is measured with fold ``f``'s people, none of them in the gallery nor used to choose the
  threshold: each of their faces searches the gallery, a non-mated search, and counts when any
  gallery face is at distance <= the threshold (the nearest one decides);
- **FNIR** with the gallery's leave-one-out mated searches (each face of an identity with another
  face in the gallery searches the rest): a miss unless rank 1 is a mate at distance <= the
  threshold (the threshold is chosen from non-mated searches only).

Pooled over folds: FPIR = accepted non-mated searches / all of them, FNIR = missed mated
searches / all of them. A target is *resolvable* when the pooled non-mated searches number at
least ``MIN_EVENTS / target`` (the rule of :mod:`facerec.gallery.openset`). Torch-free.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from facerec.errors import ConfigError
from facerec.gallery.openset import (MIN_EVENTS, OpenSetSearches, check_target, det_curve, exact_search,
                                     gallery_searches, gallery_threshold)

DEFAULT_FPIRS: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
# (name, share of all the set's people in the gallery; 1.0: every person of the other folds)
GALLERIES: tuple[tuple[str, float], ...] = (("all", 1.0), ("tenth", 0.1))
PROTOCOL = ("cross-validated by identity: per held-out fold, a gallery of other folds' people, its threshold "
            "chosen by gallery_threshold on that gallery alone (fallback: the 1:1 impostor curve of the other "
            "folds); FPIR from the held-out people's faces searching it (non-mated), FNIR from the gallery's "
            "leave-one-out mated searches; pooled over folds")


def _check_inputs(embeddings: Any, identities: Any, folds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float32)
    ids = np.asarray(identities)
    fd = np.asarray(folds)
    if x.ndim != 2 or not len(x):
        raise ConfigError("embeddings", f"shape {x.shape}", "a 2-D array, one row per face, at least one row")
    if ids.shape != (len(x),) or fd.shape != (len(x),):
        raise ConfigError("identities/folds", f"{ids.shape} / {fd.shape}", f"one label and one fold per face ({len(x)},)")
    if len(np.unique(fd)) < 2:
        raise ConfigError("folds", f"{len(np.unique(fd))} fold(s)", "at least 2 identity folds (a threshold is "
                          "chosen on other folds' people)")
    # Labels of any type -> integers, which gallery_searches takes.
    _, codes = np.unique(ids, return_inverse=True)
    return x, codes.astype(np.int64), fd


def cross_validated_open_set(embeddings: Any, identities: Any, folds: Any,
                             targets: Sequence[float] = DEFAULT_FPIRS,
                             impostors_of: Callable[[Any], dict | None] | None = None,
                             labelled: bool = True, galleries: Sequence[tuple[str, float]] = GALLERIES,
                             seed: int = 0, det_points: int = 60) -> dict[str, Any]:
    """The cross-validated open-set figures (see the module docstring), JSON-able:
    ``{"protocol", "method", "targets", "galleries": [{"gallery", "people_share", "gallery_size" (mean
    N over folds), "identities", "folds", "points": [one per target], "det": {"fpir", "fnir"}}]}``.
    Each point: ``fpir_target``, ``threshold`` (mean over folds) with ``threshold_std`` and
    ``threshold_folds``, ``methods``
    (how gallery_threshold chose, per fold), ``fpir`` (pooled held-out), ``fnir`` (pooled),
    ``fpir_folds``/``fnir_folds``, ``nonmated_searches``, ``mated_searches``, ``resolvable``.
    A gallery with no face in any fold is left out."""
    x, ids, fd = _check_inputs(embeddings, identities, folds)
    targets = [check_target(t, "fpirs") for t in targets]
    if not targets:
        raise ConfigError("fpirs", "[]", "at least one target FPIR, e.g. 0.1,0.01,0.001")
    for name, share in galleries:
        if not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ConfigError("galleries", (name, share), "a share of the people in (0, 1]")
    people = np.unique(ids)
    out = {"protocol": PROTOCOL, "method": "gallery" if labelled else "calibration", "targets": targets,
           "faces": int(len(x)), "identities": int(len(people)), "galleries": []}
    rng = np.random.default_rng(seed)
    for name, share in galleries:
        per_fold = []  # (gallery size, identities, searches, held-out nearest distances, {target: gallery_threshold})
        for f in np.unique(fd):
            held = np.unique(ids[fd == f])
            fit_people = np.setdiff1d(np.unique(ids[fd != f]), held)  # someone in several folds chooses nothing
            if share < 1:
                want = min(len(fit_people), max(1, int(round(share * len(people)))))
                fit_people = np.sort(rng.choice(fit_people, size=want, replace=False)) if want else fit_people
            g_rows = np.flatnonzero(np.isin(ids, fit_people))
            s_rows = np.flatnonzero((fd == f) & ~np.isin(ids, fit_people))
            if not len(g_rows) or not len(s_rows):
                continue
            g_x, g_ids = x[g_rows], ids[g_rows]
            impostors = impostors_of(f) if impostors_of is not None else None
            found = gallery_searches(g_x, g_ids)
            nearest = exact_search(g_x)(x[s_rows], 1)[0][:, 0].astype(np.float64)
            chosen = {t: gallery_threshold(g_x, g_ids, t, impostors=impostors, labelled=labelled) for t in targets}
            per_fold.append((len(g_rows), len(np.unique(g_ids)), found, nearest, chosen))
        if not per_fold:
            continue
        points = []
        for t in targets:
            rows = []  # per fold: threshold, method, accepted non-mated, non-mated, missed mated, mated
            for _, _, found, nearest, chosen in per_fold:
                thr = chosen[t]["threshold"]
                if thr is None:
                    continue
                n_mated = int(len(found.mated_distance))
                missed = int(round(found.fnir(thr) * n_mated)) if n_mated else 0
                rows.append((thr, chosen[t]["method"], int((nearest <= thr).sum()), len(nearest), missed, n_mated))
            nonmated = sum(r[3] for r in rows)
            mated = sum(r[5] for r in rows)
            thr = np.array([r[0] for r in rows], dtype=np.float64)
            points.append({
                "fpir_target": t,
                "threshold": float(thr.mean()) if len(thr) else None,
                "threshold_std": float(thr.std(ddof=1)) if len(thr) > 1 else 0.0 if len(thr) else None,
                "threshold_folds": [float(r[0]) for r in rows],
                "methods": [r[1] for r in rows],
                "fpir": sum(r[2] for r in rows) / nonmated if nonmated else None,
                "fnir": sum(r[4] for r in rows) / mated if mated else None,
                "fpir_folds": [r[2] / r[3] for r in rows],
                "fnir_folds": [r[4] / r[5] if r[5] else None for r in rows],
                "nonmated_searches": int(nonmated), "mated_searches": int(mated),
                "resolvable": bool(rows) and nonmated >= MIN_EVENTS / t - 1e-9,
            })
        pooled = OpenSetSearches(nonmated=np.concatenate([p[3] for p in per_fold]),
                                 mated_distance=np.concatenate([p[2].mated_distance for p in per_fold]),
                                 mated_correct=np.concatenate([p[2].mated_correct for p in per_fold]),
                                 gallery_size=int(round(np.mean([p[0] for p in per_fold]))),
                                 identities=int(round(np.mean([p[1] for p in per_fold]))))
        det = det_curve(pooled, det_points) if len(pooled.nonmated) else {"threshold": [], "fpir": [], "fnir": []}
        out["galleries"].append({
            "gallery": name, "people_share": float(share), "gallery_size": pooled.gallery_size,
            "identities": pooled.identities, "folds": len(per_fold), "points": points,
            "det": {k: [round(float(v), 6) for v in det[k]] for k in ("threshold", "fpir", "fnir")},
        })
    return out


def rows(open_set: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per (gallery, target): the CSV and Markdown tables' rows."""
    out = []
    for g in open_set.get("galleries", []):
        for p in g["points"]:
            out.append({"gallery": g["gallery"], "gallery_size": g["gallery_size"], "identities": g["identities"],
                        "fpir_target": p["fpir_target"], "threshold": p["threshold"], "threshold_std": p["threshold_std"],
                        "method": "/".join(sorted(set(p["methods"]))), "fpir": p["fpir"], "fnir": p["fnir"],
                        "nonmated_searches": p["nonmated_searches"], "mated_searches": p["mated_searches"],
                        "resolvable": p["resolvable"]})
    return out
