"""Clustered synthetic embeddings for index tests and benchmarks: more face-like than uniform
points on the sphere.

Each identity has a centre c ~ N(0, R diag(v) R^T) and each image is x = normalise(c + e) with
e ~ N(0, sigma^2 R diag(v) R^T), where v_j proportional to 1/j (j = 1..d, sum v = 1) and R is a
random rotation. The 1/j eigenspectrum is the power law reported for learned representations
(Stringer et al. 2019, "High-dimensional geometry of population responses in visual cortex",
Nature; Agrawal et al. 2022, "alpha-ReQ", NeurIPS: alpha close to 1 in well-trained
encoders); the rotation keeps it from being axis-aligned, as real embeddings are not. With the
default ``noise=0.6``, same-identity cosine similarity is about 0.7 and different-identity
about 0, roughly what trained face embeddings show.
"""

from __future__ import annotations

import numpy as np


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))  # Haar-uniform (Mezzadri 2007)


def clustered_embeddings(
    n: int,
    dim: int = 128,
    images_per_identity: int = 20,
    noise: float = 0.6,
    spectrum_decay: float = 1.0,
    seed: int = 0,
    block: int = 262_144,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit-norm float32 vectors (n, dim) and their identity labels (n,) int64.

    ``spectrum_decay`` a: variance of the j-th principal direction proportional to j^-a
    (0 = isotropic, the hardest case for PCA-reduced search)."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, -(-n // images_per_identity))
    v = np.arange(1, dim + 1, dtype=np.float64) ** -float(spectrum_decay)
    scale = np.sqrt(v / v.sum())
    basis = (scale[:, None] * random_rotation(dim, rng)).astype(np.float32)  # row j scaled by sqrt(v_j)
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32) @ basis
    labels = rng.integers(0, n_ids, size=n)
    labels[:n_ids] = np.arange(min(n_ids, n))  # every identity appears at least once
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, block):
        e = rng.standard_normal((min(block, n - s), dim), dtype=np.float32) @ basis
        xb = centres[labels[s : s + block]] + noise * e
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        x[s : s + block] = xb
    return x, labels.astype(np.int64)
