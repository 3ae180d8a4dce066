"""External quality of a clustering against true identities.

BCubed (Amigó, Gonzalo, Artiles & Verdejo, "A comparison of extrinsic clustering evaluation metrics
based on formal constraints", Information Retrieval 12, 2009): per item, precision is the share of
its cluster that shares its identity, recall the share of its identity that shares its cluster
(the item itself counted); each averaged over items. Pairwise: precision/recall of the same-cluster
pairs against the same-identity pairs. Every item counts: a face left on its own is a cluster of one.
"""

from __future__ import annotations

import numpy as np

from facerec.errors import ConfigError


def _check(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.ndim != 1 or pred.shape != true.shape or not len(pred):
        raise ConfigError("pred", f"shape {pred.shape} against true {true.shape}",
                          "two non-empty 1-D label arrays of one length (one label per face)")
    return np.unique(pred, return_inverse=True)[1], np.unique(true, return_inverse=True)[1]


def _contingency(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(cell counts, cell's cluster, cell's identity) over non-empty cells, plus cluster/identity sizes."""
    cells, counts = np.unique(p.astype(np.int64) * (t.max() + 1) + t, return_counts=True)
    return counts.astype(np.float64), cells // (t.max() + 1), cells % (t.max() + 1), np.bincount(p), np.bincount(t)


def bcubed(pred, true) -> dict[str, float]:
    """BCubed precision, recall and F1 (harmonic mean) of cluster labels ``pred`` against ``true``."""
    p, t = _check(pred, true)
    c, cp, ct, psize, tsize = _contingency(p, t)
    # each of the c items of a cell sees c same-identity items in its cluster: c * (c / |cluster|)
    precision = float((c * c / psize[cp]).sum() / len(p))
    recall = float((c * c / tsize[ct]).sum() / len(p))
    return {"precision": precision, "recall": recall, "f": 2 * precision * recall / (precision + recall)}


def pairwise_prf(pred, true) -> dict[str, float]:
    """Pairwise precision, recall and F1; precision (recall) is 1 when no pair is predicted (true)."""
    p, t = _check(pred, true)
    c, _, _, psize, tsize = _contingency(p, t)

    def pairs(x):
        return float((x * (x - 1) / 2).sum())

    both, pred_pairs, true_pairs = pairs(c), pairs(psize.astype(np.float64)), pairs(tsize.astype(np.float64))
    precision = both / pred_pairs if pred_pairs else 1.0
    recall = both / true_pairs if true_pairs else 1.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f": f}
