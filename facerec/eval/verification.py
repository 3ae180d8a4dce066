"""Face verification on LFW pairs: the ``pairs.txt`` reader and the k-fold accuracy protocol.

Protocol (Huang et al. 2007, "Labeled Faces in the Wild: A Database for Studying Face
Recognition in Unconstrained Environments", UMass TR 07-49, "View 2"): the pairs come in
folds; for each fold, the decision threshold is chosen on the *other* folds (the one
maximising their accuracy) and accuracy is measured on the held-out fold. The report is the
mean accuracy over folds and its spread; the LFW README asks for the standard error
S_E = sigma / sqrt(n_folds) with sigma the sample standard deviation (ddof = 1), which is
what ``std`` here is (divide by sqrt(n_folds) for S_E).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facerec.errors import AnnotationError, ConfigError, DataNotFoundError

IMAGE_FOLDER = "lfw-deepfunneled"


def lfw_path(name: str, number: int, folder: str = IMAGE_FOLDER) -> str:
    """Path of image ``number`` (1-based) of ``name`` relative to the LFW root:
    ``lfw-deepfunneled/Name/Name_0001.jpg``."""
    return f"{folder}/{name}/{name}_{number:04d}.jpg"


def _parse_int(token: str, path, line: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise AnnotationError(path, line, f"{what} {token!r} is not an integer") from None
    if value < 1:
        raise AnnotationError(path, line, f"{what} {value} must be >= 1")
    return value


def read_pairs(path: str | os.PathLike, image_folder: str = IMAGE_FOLDER) -> pd.DataFrame:
    """Read an LFW pairs file.

    Format: a header ``nfolds<TAB>n`` (a single ``n`` -- the pairsDevTrain/DevTest form -- is
    read as one fold), then for each fold ``n`` matched lines ``Name<TAB>i<TAB>j`` followed by
    ``n`` mismatched lines ``Name1<TAB>i<TAB>Name2<TAB>j``. Any whitespace separates fields;
    CRLF line ends, a UTF-8 BOM and trailing blank lines are accepted.

    Returns a DataFrame with columns ``path1``, ``path2`` (relative to the LFW root, e.g.
    ``lfw-deepfunneled/Name/Name_0001.jpg``), ``same`` (bool) and ``fold`` (0-based int), in
    file order. A malformed line raises :class:`AnnotationError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"pairs file {path} not found; expected LFW's pairs.txt (e.g. <LFW root>/pairs.txt)")
    with open(path, encoding="utf-8-sig", newline=None) as f:  # universal newlines: CRLF -> \n
        lines = f.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise AnnotationError(path, 1, "empty file: expected a header 'nfolds<TAB>n'")
    head = lines[0].split()
    if len(head) == 2:
        nfolds = _parse_int(head[0], path, 1, "number of folds")
        n = _parse_int(head[1], path, 1, "pairs per fold")
    elif len(head) == 1:
        nfolds, n = 1, _parse_int(head[0], path, 1, "number of pairs")
    else:
        raise AnnotationError(path, 1, f"header {lines[0]!r} should be 'nfolds<TAB>n' (two integers)")
    expected = 1 + nfolds * 2 * n
    if len(lines) != expected:
        raise AnnotationError(
            path,
            len(lines) + 1 if len(lines) < expected else expected + 1,
            f"header says {nfolds} folds x {2 * n} pairs = {expected - 1} pair lines, "
            f"the file has {len(lines) - 1}",
        )
    path1, path2, same, fold = [], [], [], []
    for lineno in range(2, expected + 1):
        raw = lines[lineno - 1]
        i = lineno - 2
        fi, within = divmod(i, 2 * n)
        matched = within < n
        parts = raw.split()
        if matched:
            if len(parts) != 3:
                raise AnnotationError(
                    path, lineno, f"expected a matched pair 'Name<TAB>i<TAB>j' (fold {fi + 1}), got {raw.strip()!r}"
                )
            name, a, b = parts
            path1.append(lfw_path(name, _parse_int(a, path, lineno, "image number"), image_folder))
            path2.append(lfw_path(name, _parse_int(b, path, lineno, "image number"), image_folder))
        else:
            if len(parts) != 4:
                raise AnnotationError(
                    path,
                    lineno,
                    f"expected a mismatched pair 'Name1<TAB>i<TAB>Name2<TAB>j' (fold {fi + 1}), got {raw.strip()!r}",
                )
            n1, a, n2, b = parts
            path1.append(lfw_path(n1, _parse_int(a, path, lineno, "image number"), image_folder))
            path2.append(lfw_path(n2, _parse_int(b, path, lineno, "image number"), image_folder))
        same.append(matched)
        fold.append(fi)
    return pd.DataFrame(
        {
            "path1": path1,
            "path2": path2,
            "same": np.asarray(same, dtype=bool),
            "fold": np.asarray(fold, dtype=np.int64),
        }
    )


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold t maximising the accuracy of "same iff score > t" on (scores, same).

    Candidates are the midpoints between consecutive distinct scores plus -inf and +inf, so
    the rule never depends on how ties at t are broken; among equally accurate thresholds the
    smallest is taken. Returns (t, accuracy)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    y = same[order].astype(np.int64)
    m = s.shape[0]
    # Cut after position c (0..m): predict "different" for the c lowest, "same" for the rest.
    diff_below = np.concatenate([[0], np.cumsum(1 - y)])
    same_above = y.sum() - np.concatenate([[0], np.cumsum(y)])
    correct = diff_below + same_above
    valid = np.ones(m + 1, dtype=bool)
    valid[1:m] = s[1:] > s[:-1]  # a cut between equal scores is not a threshold
    correct = np.where(valid, correct, -1)
    c = int(np.argmax(correct))
    if c == 0:
        t = -np.inf
    elif c == m:
        t = np.inf
    else:
        t = float((s[c - 1] + s[c]) / 2)
    return t, correct[c] / m


def kfold_verification_accuracy(
    scores: Any, same: Any, folds: Any, higher_is_same: bool = True
) -> tuple[float, float, pd.DataFrame]:
    """LFW k-fold verification accuracy (Huang et al. 2007, View 2 protocol).

    ``scores``: one similarity per pair (e.g. cosine; pass ``higher_is_same=False`` for
    distances), ``same``: bool per pair, ``folds``: fold id per pair (>= 2 distinct folds).
    For each fold, the threshold is fit on the other folds (:func:`best_threshold`) and
    accuracy is measured on the fold. Returns ``(mean, std, per_fold)`` where std is the
    sample standard deviation over folds (ddof=1) and ``per_fold`` has columns fold,
    threshold (in the caller's score units), accuracy, n_pairs.
    """
    sc = np.asarray(scores, dtype=np.float64)
    sm = np.asarray(same)
    fd = np.asarray(folds)
    if sc.ndim != 1:
        raise ConfigError("scores", f"array of shape {sc.shape}", "a 1-D array, one score per pair")
    if sm.shape != sc.shape or fd.shape != sc.shape:
        raise ConfigError("same/folds", f"shapes {sm.shape}, {fd.shape}", f"1-D arrays of {sc.shape[0]} values like scores")
    if not np.isfinite(sc).all():
        bad = int(np.flatnonzero(~np.isfinite(sc))[0])
        raise ConfigError("scores", f"NaN/inf at pair {bad}", "finite scores (a failed embedding?)")
    if sm.dtype != bool:
        if not np.isin(sm, [0, 1]).all():
            raise ConfigError("same", f"values {np.unique(sm)[:5]}", "booleans (or 0/1)")
        sm = sm.astype(bool)
    sign = 1.0 if higher_is_same else -1.0
    sc = sc * sign
    fold_ids = np.unique(fd)
    if fold_ids.size < 2:
        raise ConfigError("folds", f"{fold_ids.size} distinct fold(s)", "at least 2 folds (threshold is fit on the others)")
    rows = []
    for f in fold_ids:
        test = fd == f
        t, _ = best_threshold(sc[~test], sm[~test])
        acc = float(((sc[test] > t) == sm[test]).mean())
        rows.append({"fold": f, "threshold": sign * t, "accuracy": acc, "n_pairs": int(test.sum())})
    per_fold = pd.DataFrame(rows, columns=["fold", "threshold", "accuracy", "n_pairs"])
    accs = per_fold["accuracy"].to_numpy()
    return float(accs.mean()), float(accs.std(ddof=1)), per_fold
