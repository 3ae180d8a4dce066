"""Calibrated verification: genuine and impostor distances -> ROC, TAR at fixed FAR, EER, and the
distance thresholds, cross-validated over folds.

A pair is accepted as "same person" iff the Euclidean distance of its embeddings is ``<= t``.
TAR(t) (true accept rate) is the share of genuine pairs accepted, FAR(t) (false accept rate) the
share of impostor pairs accepted, FRR = 1 - TAR (Jain, Ross & Prabhakar 2004, "An Introduction to
Biometric Recognition", IEEE TCSVT 14(1), Sec. II; the TAR-at-FAR report of Huang et al. 2007's
LFW "unrestricted" ROC and of the IJB benchmarks).

Protocol (the LFW View 2 rule applied to thresholds): for each held-out fold, every threshold --
at each FAR and at the EER -- is fitted on the *other* folds only and scored on the held-out one;
the report is the mean and sample standard deviation over held-out folds, and the pooled rates
(accepted pairs of all held-out folds over all their pairs, each fold judged by its own
threshold). The thresholds a server uses are fitted on all folds; the cross-validated figures
are what to expect from them on unseen people.

Resolution: a FAR f measured on N impostor pairs moves in steps of 1/N, and at f * N accepted
impostors its relative standard error is about 1/sqrt(f * N). A FAR is *resolvable* only when
both the fitting folds and every held-out fold have ``f * N >= min_false_accepts`` (default 10,
about 30 % relative error); otherwise its entry says "not resolvable with N impostor pairs" and
carries no number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from facerec.errors import ConfigError
from facerec.models.calibration import DEFAULT_FAR  # noqa: F401  (the default calibrate stores)

DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
MIN_FALSE_ACCEPTS = 10


def _distances(values: Any, what: str) -> np.ndarray:
    d = np.asarray(values, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise ConfigError(what, "0 pairs", "at least one pair")
    if not np.isfinite(d).all():
        bad = int(np.flatnonzero(~np.isfinite(d))[0])
        raise ConfigError(what, f"NaN/inf at pair {bad}", "finite distances (a failed embedding?)")
    return d


def roc_curve(genuine: Any, impostor: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, far, tar) of "accept iff distance <= t", one point per distinct distance,
    ascending, after a first point (t = -inf, far = tar = 0)."""
    g = np.sort(_distances(genuine, "genuine"))
    i = np.sort(_distances(impostor, "impostor"))
    t = np.unique(np.concatenate([g, i]))
    tar = np.searchsorted(g, t, side="right") / g.size
    far = np.searchsorted(i, t, side="right") / i.size
    return np.concatenate([[-np.inf], t]), np.concatenate([[0.0], far]), np.concatenate([[0.0], tar])


def rates(genuine: Any, impostor: Any, threshold: float) -> tuple[float, float]:
    """(TAR, FAR) at ``threshold``."""
    g = _distances(genuine, "genuine")
    i = _distances(impostor, "impostor")
    return float(np.mean(g <= threshold)), float(np.mean(i <= threshold))


def threshold_at_far(impostor: Any, far: float) -> float:
    """The largest acceptance rule whose FAR on ``impostor`` is at most ``far``: a threshold that
    accepts at most floor(far * N) of the N impostor pairs, placed halfway between the last
    accepted and the first rejected distinct distance (ties are accepted or rejected together)."""
    if not 0 < far < 1:
        raise ConfigError("far", far, "a false accept rate in (0, 1), e.g. 0.001")
    i = np.sort(_distances(impostor, "impostor"))
    allowed = int(np.floor(far * i.size + 1e-9))
    u = np.unique(i)
    accepted = np.searchsorted(i, u, side="right")  # impostors accepted at t = u_j
    j = int(np.searchsorted(accepted, allowed, side="right")) - 1  # last u_j with accepted <= allowed
    if j < 0:
        return float(np.nextafter(u[0], -np.inf))
    if j == u.size - 1:
        return float(u[-1])
    return float((u[j] + u[j + 1]) / 2)


def equal_error_rate(genuine: Any, impostor: Any) -> tuple[float, float]:
    """(EER, threshold): where FAR = FRR on the ROC, linearly interpolated between the two ROC
    points around the crossing (the rates at the returned threshold need not be exactly equal:
    they move in steps)."""
    t, far, tar = roc_curve(genuine, impostor)
    frr = 1.0 - tar
    diff = far - frr  # -1 at t = -inf, rising to >= 0 at the largest distance
    k = int(np.argmax(diff >= 0))
    if diff[k] == 0 or k == 0:
        return float(far[k]), float(t[k])
    a = -diff[k - 1] / (diff[k] - diff[k - 1])  # share of the way from point k-1 to point k
    eer = far[k - 1] + a * (far[k] - far[k - 1])
    lo = t[k - 1] if np.isfinite(t[k - 1]) else t[k]
    return float(eer), float(lo + a * (t[k] - lo))


def resolvable(n_impostor: int, far: float, min_false_accepts: int = MIN_FALSE_ACCEPTS) -> bool:
    """Whether a FAR of ``far`` can be measured on ``n_impostor`` pairs (see module docstring)."""
    return far * n_impostor >= min_false_accepts - 1e-9


def needed_impostors(far: float, min_false_accepts: int = MIN_FALSE_ACCEPTS) -> int:
    return int(np.ceil(min_false_accepts / far - 1e-9))


@dataclass
class FoldedDistances:
    """Distances of genuine and impostor pairs, each with the fold it belongs to."""

    genuine: np.ndarray
    genuine_fold: np.ndarray
    impostor: np.ndarray
    impostor_fold: np.ndarray
    folds: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.genuine = _distances(self.genuine, "genuine")
        self.impostor = _distances(self.impostor, "impostor")
        self.genuine_fold = np.asarray(self.genuine_fold).reshape(-1)
        self.impostor_fold = np.asarray(self.impostor_fold).reshape(-1)
        if self.genuine_fold.shape != self.genuine.shape or self.impostor_fold.shape != self.impostor.shape:
            raise ConfigError("folds", (self.genuine_fold.shape, self.impostor_fold.shape),
                              f"one fold id per pair ({self.genuine.shape}, {self.impostor.shape})")
        self.folds = sorted(set(np.unique(self.genuine_fold)) | set(np.unique(self.impostor_fold)))
        if len(self.folds) < 2:
            raise ConfigError("folds", f"{len(self.folds)} fold(s)", "at least 2 folds (thresholds are fitted on the others)")
        for f in self.folds:
            if not (self.genuine_fold == f).any() or not (self.impostor_fold == f).any():
                raise ConfigError("folds", f"fold {f}", "genuine and impostor pairs in every fold")

    def split(self, fold) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(genuine fit, impostor fit, genuine held out, impostor held out) for held-out ``fold``."""
        g, i = self.genuine_fold == fold, self.impostor_fold == fold
        return self.genuine[~g], self.impostor[~i], self.genuine[g], self.impostor[i]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def not_resolvable_note(n: int, far: float, min_false_accepts: int, where: str) -> str:
    return (f"not resolvable with {n} impostor pairs ({where}): FAR {far:g} needs at least "
            f"{needed_impostors(far, min_false_accepts)} ({min_false_accepts} false accepts)")


def cross_validate(data: FoldedDistances, fars: Sequence[float] = DEFAULT_FARS,
                   min_false_accepts: int = MIN_FALSE_ACCEPTS) -> dict[str, Any]:
    """Cross-validated operating points (see the module docstring).

    Returns {"per_fold": DataFrame (fold, point ("far" or "eer"), far, threshold, tar, far_measured,
    n_genuine, n_impostor; the EER rows' threshold is the fit folds' EER threshold and their ``eer``
    column the held-out fold's own EER),
    "operating_points": [one dict per FAR: far, resolvable, note, threshold (fitted on all folds),
    tar_mean/std, far_mean/std, tar_pooled, far_pooled, threshold_mean/std], "eer": {...}}."""
    for f in fars:
        if not 0 < f < 1:
            raise ConfigError("fars", f, "false accept rates in (0, 1)")
    if not isinstance(min_false_accepts, (int, np.integer)) or min_false_accepts < 1:
        raise ConfigError("min_false_accepts", min_false_accepts, "an integer >= 1")
    rows: list[dict[str, Any]] = []
    for fold in data.folds:
        g_fit, i_fit, g_out, i_out = data.split(fold)
        for f in fars:
            ok = resolvable(i_fit.size, f, min_false_accepts) and resolvable(i_out.size, f, min_false_accepts)
            row = {"fold": fold, "point": "far", "far": f, "resolvable": ok, "n_genuine": g_out.size, "n_impostor": i_out.size,
                   "n_impostor_fit": i_fit.size, "threshold": np.nan, "tar": np.nan, "far_measured": np.nan,
                   "accepted_genuine": 0, "accepted_impostor": 0, "eer": np.nan}
            if ok:
                t = threshold_at_far(i_fit, f)  # from the other folds only
                row.update(threshold=t, tar=float(np.mean(g_out <= t)), far_measured=float(np.mean(i_out <= t)),
                           accepted_genuine=int((g_out <= t).sum()), accepted_impostor=int((i_out <= t).sum()))
            rows.append(row)
        _, t_eer = equal_error_rate(g_fit, i_fit)
        eer_out, _ = equal_error_rate(g_out, i_out)
        rows.append({"fold": fold, "point": "eer", "far": np.nan, "resolvable": True, "n_genuine": g_out.size, "n_impostor": i_out.size,
                     "n_impostor_fit": i_fit.size, "threshold": t_eer, "tar": float(np.mean(g_out <= t_eer)),
                     "far_measured": float(np.mean(i_out <= t_eer)), "accepted_genuine": int((g_out <= t_eer).sum()),
                     "accepted_impostor": int((i_out <= t_eer).sum()), "eer": eer_out})
    per_fold = pd.DataFrame(rows)
    points = []
    for f in fars:
        sub = per_fold[(per_fold["point"] == "far") & (per_fold["far"] == f)]
        ok = bool(sub["resolvable"].all()) and resolvable(data.impostor.size, f, min_false_accepts)
        point: dict[str, Any] = {"far": float(f), "resolvable": ok}
        if ok:
            point["threshold"] = threshold_at_far(data.impostor, f)
            for col, name in (("tar", "tar"), ("far_measured", "far"), ("threshold", "threshold_cv")):
                point[f"{name}_mean"], point[f"{name}_std"] = _mean_std(sub[col])
            point["tar_pooled"] = float(sub["accepted_genuine"].sum() / sub["n_genuine"].sum())
            point["far_pooled"] = float(sub["accepted_impostor"].sum() / sub["n_impostor"].sum())
            point["note"] = None
        else:
            smallest = int(sub["n_impostor"].min())
            point["note"] = not_resolvable_note(smallest, f, min_false_accepts, "smallest held-out fold")
        points.append(point)
    eer_rows = per_fold[per_fold["point"] == "eer"]
    eer_all, t_all = equal_error_rate(data.genuine, data.impostor)
    eer = {"pooled": eer_all, "threshold": t_all}
    eer["mean"], eer["std"] = _mean_std(eer_rows["eer"])
    eer["heldout_far_mean"], _ = _mean_std(eer_rows["far_measured"])
    eer["heldout_frr_mean"], _ = _mean_std(1.0 - eer_rows["tar"].to_numpy())
    return {"per_fold": per_fold, "operating_points": points, "eer": eer}


def pairs_within_folds(identity: Any, fold: Any, max_pairs_per_fold: int | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair of distinct images inside each fold, split by whether the two share an
    identity: ``(genuine_pairs (n, 2), genuine_fold, impostor_pairs (m, 2), impostor_fold)`` as
    row positions. No pair crosses folds, so fold-wise identity-disjoint data stays so.

    ``max_pairs_per_fold``: a fold with more candidate pairs keeps a seeded uniform sample of that
    many (genuine and impostor alike), so a large folder does not need n^2 / 2 distances."""
    ident = np.asarray(identity)
    fd = np.asarray(fold)
    if ident.shape != fd.shape or ident.ndim != 1:
        raise ConfigError("identity/fold", (ident.shape, fd.shape), "two 1-D arrays, one value per image")
    if max_pairs_per_fold is not None and (not isinstance(max_pairs_per_fold, (int, np.integer)) or max_pairs_per_fold < 1):
        raise ConfigError("max_pairs_per_fold", max_pairs_per_fold, "None or an integer >= 1")
    rng = np.random.default_rng(seed)
    gen, gen_f, imp, imp_f = [], [], [], []
    for f in np.unique(fd):
        rows = np.flatnonzero(fd == f)
        n = rows.size
        total = n * (n - 1) // 2
        if max_pairs_per_fold is None or total <= max_pairs_per_fold:
            a, b = np.triu_indices(n, 1)
        else:
            # Pair number p -> (a, b) of the upper triangle, sampled without replacement.
            p = np.sort(rng.choice(total, size=max_pairs_per_fold, replace=False))
            a = (n - 2 - np.floor(np.sqrt(-8.0 * p + 4.0 * n * (n - 1) - 7) / 2.0 - 0.5)).astype(np.int64)
            b = (p + a + 1 - n * (n - 1) // 2 + (n - a) * ((n - a) - 1) // 2).astype(np.int64)
        pa, pb = rows[a], rows[b]
        same = ident[pa] == ident[pb]
        gen.append(np.stack([pa[same], pb[same]], 1))
        imp.append(np.stack([pa[~same], pb[~same]], 1))
        gen_f.append(np.full(int(same.sum()), f))
        imp_f.append(np.full(int((~same).sum()), f))
    return np.concatenate(gen), np.concatenate(gen_f), np.concatenate(imp), np.concatenate(imp_f)


def pair_distances(embeddings: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Euclidean distance of each (a, b) row pair of ``embeddings`` (float64, in chunks)."""
    emb = np.asarray(embeddings)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        p = pairs[s:s + chunk]
        out[s:s + chunk] = np.linalg.norm(emb[p[:, 0]].astype(np.float64) - emb[p[:, 1]].astype(np.float64), axis=1)
    return out


def identity_folds(identity: Any, n_folds: int, seed: int = 0) -> np.ndarray:
    """A fold id per image such that each identity is in one fold: identities shuffled with
    ``seed`` and dealt round-robin (folds of equal identity counts, +- 1)."""
    ident = np.asarray(identity)
    ids = np.unique(ident)
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ConfigError("folds", n_folds, "an integer >= 2")
    if ids.size < n_folds:
        raise ConfigError("folds", n_folds, f"at most the {ids.size} identities of the split")
    rng = np.random.default_rng(seed)
    order = rng.permutation(ids)
    fold_of = {v: k % n_folds for k, v in enumerate(order)}
    return np.asarray([fold_of[v] for v in ident], dtype=np.int64)
