"""numpy port of ``dlib.get_face_chip``: dlib's aligned face chip, bit-identical.

``dlib.get_face_chip(img, det, size, padding)`` is ``extract_image_chip(img,
get_face_chip_details(det, size, padding))`` (dlib/image_transforms/interpolation.h); each step
is ported op for op, in float64:

- :func:`face_chip_details`: the similarity transform (dlib's Umeyama with dlib's 2 x 2 SVD)
  from the 5 reference points of dlib's mean face, padded, to the landmarks; the chip's angle
  and its centred rectangle in the image.
- :func:`extract_image_chip`: when the chip shrinks the face by more than ~2x, dlib first
  reduces the grown bounding box of the rotated rectangle with ``pyramid_down<2>`` (a 5 x 5
  [1 4 6 4 1]^2 filter, integer sums divided by 256, every other row and column) as many times
  as the chip's area needs; then it maps each chip pixel through ``find_affine_transform``
  (``Q * pinv(P)``, dlib's SVD) and samples bilinearly in float64, truncating to uint8. A sample
  whose 2 x 2 neighbourhood leaves the (cropped) source is 0.

``padding`` goes through float32 first, as dlib's Python binding takes it as ``float``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from facerec.dlibport.facts import CHIP_PADDING, CHIP_SIZE
from facerec.dlibport.shape_predictor import (
    ShapePredictor,
    affine_from_pinv,
    dlib_pinv,
    find_similarity_transform,
)

# dlib's 5-point mean face (get_face_chip_details), in the landmark model's part order.
MEAN_FACE_5 = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)


@dataclass(frozen=True)
class ChipDetails:
    """dlib's ``chip_details``: a rotated rectangle (``drectangle``: left, top, right, bottom,
    inclusive, float) in the image, its rotation ``angle`` (radians) and the chip's size."""
    rect: tuple[float, float, float, float]
    angle: float
    rows: int
    cols: int


# --------------------------------------------------------------------------------------------
# drectangle helpers (dlib/geometry/drectangle.h)


def _lround(x: float) -> int:
    """C's ``lround``: half away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def _is_empty(r) -> bool:
    return r[1] > r[3] or r[0] > r[2]


def _width(r) -> float:
    return 0.0 if _is_empty(r) else r[2] - r[0] + 1


def _height(r) -> float:
    return 0.0 if _is_empty(r) else r[3] - r[1] + 1


def _area(r) -> float:
    return _width(r) * _height(r)


def _center(r) -> tuple[float, float]:
    return (r[0] + r[2]) / 2.0, (r[1] + r[3]) / 2.0


def _point_down(x: float, y: float) -> tuple[float, float]:
    """``pyramid_down<2>::point_down``: p/2 - (1.25, 0.75)."""
    return x / 2.0 - 1.25, y / 2.0 - 0.75


def _rect_down(r):
    l, t = _point_down(r[0], r[1])
    rr, b = _point_down(r[2], r[3])
    return (min(l, rr), min(t, b), max(l, rr), max(t, b))


def _rotate_point(center, p, angle: float) -> tuple[float, float]:
    """dlib's ``rotate_point``: ``point_rotator(angle)(p - center) + center``."""
    sa, ca = math.sin(angle), math.cos(angle)
    dx, dy = p[0] - center[0], p[1] - center[1]
    return (ca * dx - sa * dy) + center[0], (sa * dx + ca * dy) + center[1]


def _rotated_corners(r, angle: float):
    c = _center(r)
    return [_rotate_point(c, p, angle) for p in ((r[0], r[1]), (r[2], r[1]), (r[0], r[3]), (r[2], r[3]))]


# --------------------------------------------------------------------------------------------
# get_face_chip_details


def face_chip_details(landmarks, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> ChipDetails:
    """dlib's ``get_face_chip_details`` for 5 landmarks (5, 2) (rounded to dlib's integer points)."""
    pts = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if pts.shape[0] != 5:
        raise ValueError(f"expected the 5 landmarks of dlib's 5-point model, got {pts.shape[0]} points")
    if size <= 0:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    padding = float(np.float32(padding))  # the Python binding's float
    if not padding >= 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    pts = np.floor(pts + 0.5)  # dlib.point
    scale = 1.0 / (2 * padding + 1)  # a dlib matrix divided by a scalar is multiplied by its reciprocal
    chip_pts = [((padding + x) * scale * size, (padding + y) * scale * size) for x, y in MEAN_FACE_5]
    return chip_details_from_points(chip_pts, pts.tolist(), size, size)


def chip_details_from_points(chip_points, img_points, rows: int, cols: int) -> ChipDetails:
    """dlib's ``chip_details(chip_points, img_points, chip_dims(rows, cols))``."""
    m, b = find_similarity_transform(chip_points, img_points)
    px, py = m[0][0] * 1.0 + m[0][1] * 0.0, m[1][0] * 1.0 + m[1][1] * 0.0
    angle = math.atan2(py, px)
    scale = math.sqrt(px * px + py * py)
    cx, cy = cols / 2.0, rows / 2.0
    ctr = ((m[0][0] * cx + m[0][1] * cy) + b[0], (m[1][0] * cx + m[1][1] * cy) + b[1])
    w, h = cols * scale - 1, rows * scale - 1  # centered_drect
    rect = (ctr[0] - w / 2, ctr[1] - h / 2, ctr[0] + w / 2, ctr[1] + h / 2)
    return ChipDetails(rect, angle, int(rows), int(cols))


# --------------------------------------------------------------------------------------------
# extract_image_chip


def pyramid_down2(img: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` of a uint8 image (HxW or HxWxC): out[r, c] = sum of the
    5 x 5 block at (2r, 2c) weighted [1 4 6 4 1] x [1 4 6 4 1], integer-divided by 256;
    (H-3)//2 x (W-3)//2 pixels; empty for an image of 8 pixels or less on a side."""
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0) + img.shape[2:], np.uint8)
    x = img.astype(np.int32)
    oc = (w - 3) // 2
    row = x[:, 0:2 * oc:2] + 4 * x[:, 1:2 * oc + 1:2] + 6 * x[:, 2:2 * oc + 2:2] + 4 * x[:, 3:2 * oc + 3:2] + x[:, 4:2 * oc + 4:2]
    orr = (h - 3) // 2
    col = row[0:2 * orr:2] + 4 * row[1:2 * orr + 1:2] + 6 * row[2:2 * orr + 2:2] + 4 * row[3:2 * orr + 3:2] + row[4:2 * orr + 4:2]
    return (col // 256).astype(np.uint8)


@lru_cache(maxsize=16)
def _chip_pinv(rows: int, cols: int):
    # from-points: the chip's tl, tr, bl corners, with a row of ones
    return dlib_pinv([[0.0, cols - 1.0, 0.0], [0.0, 0.0, rows - 1.0], [1.0, 1.0, 1.0]])


def _bilinear(src: np.ndarray, m: np.ndarray, b: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's ``transform_image`` with ``interpolate_bilinear`` and a black background."""
    ch = src.shape[2] if src.ndim == 3 else 1
    nr, nc = src.shape[:2]
    if nr < 2 or nc < 2:  # no 2 x 2 neighbourhood anywhere: all background
        return np.zeros((rows, cols) + src.shape[2:], np.uint8)
    c = np.tile(np.arange(cols, dtype=np.float64), rows)
    r = np.repeat(np.arange(rows, dtype=np.float64), cols)
    x = (m[0, 0] * c + m[0, 1] * r) + b[0]
    y = (m[1, 0] * c + m[1, 1] * r) + b[1]
    left = np.floor(x)
    top = np.floor(y)
    ok = (left >= 0) & (top >= 0) & (left + 1 < nc) & (top + 1 < nr)
    idx = np.clip(top, 0, nr - 2).astype(np.int64) * nc + np.clip(left, 0, nc - 2).astype(np.int64)
    s = src.reshape(nr * nc, ch).astype(np.float64)
    tl, tr = s.take(idx, axis=0), s.take(idx + 1, axis=0)
    bl, br = s.take(idx + nc, axis=0), s.take(idx + nc + 1, axis=0)
    lr = (x - left)[:, None]
    tb = (y - top)[:, None]
    v = (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
    v[~ok] = 0.0
    out = v.astype(np.uint8)  # static_cast<unsigned char>: truncation
    return out.reshape((rows, cols) + src.shape[2:])


def _basic_extract(img: np.ndarray, rect) -> np.ndarray:
    """dlib's ``basic_extract_image_chip``: a plain copy of an integer rectangle, zeros outside."""
    l, t, r, b = (_lround(v) for v in rect)
    out = np.zeros((max(0, b - t + 1), max(0, r - l + 1)) + img.shape[2:], np.uint8)
    h, w = img.shape[:2]
    il, it, ir, ib = max(l, 0), max(t, 0), min(r, w - 1), min(b, h - 1)
    if il <= ir and it <= ib:
        out[it - t:ib - t + 1, il - l:ir - l + 1] = img[it:ib + 1, il:ir + 1]
    return out


def extract_image_chip(image: np.ndarray, details: ChipDetails) -> np.ndarray:
    """dlib's ``extract_image_chip(img, details, chip)`` with bilinear interpolation, for a uint8
    grey or RGB image."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWxC image, got {img.dtype} {img.shape}")
    rect, angle, rows, cols = details.rect, details.angle, details.rows, details.cols
    if rows * cols == 0 or _is_empty(rect):
        raise ValueError(f"an empty chip: {details}")
    if angle == 0 and rows == _height(rect) and cols == _width(rect):
        return _basic_extract(img, rect)
    size = rows * cols
    h, w = img.shape[:2]
    # how deep the pyramid must go, and the part of the image it needs
    depth = 0
    grow = 2.0
    rd = _rect_down(rect)
    while _area(rd) > size:
        rd = _rect_down(rd)
        depth += 1
        grow = grow * 2 + 2
    corners = _rotated_corners(rect, angle)
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    rot = (min(xs), min(ys), max(xs), max(ys))
    g = (rot[0] - grow, rot[1] - grow, rot[2] + grow, rot[3] + grow)
    g = (max(g[0], 0.0), max(g[1], 0.0), min(g[2], w - 1.0), min(g[3], h - 1.0))
    bb = tuple(_lround(v) for v in g)
    if bb[1] > bb[3] or bb[0] > bb[2]:  # the chip lies entirely outside the image
        bb = (0, 0, -1, -1)
    sub = img[bb[1]:bb[3] + 1, bb[0]:bb[2] + 1] if not (bb[1] > bb[3] or bb[0] > bb[2]) else img[:0, :0]
    levels = []
    if depth:
        levels.append(pyramid_down2(sub))
        for _ in range(1, depth):
            levels.append(pyramid_down2(levels[-1]))
    # the level to sample from, and the chip -> level mapping
    level = -1
    r = (rect[0] - bb[0], rect[1] - bb[1], rect[2] - bb[0], rect[3] - bb[1])
    while _area(_rect_down(r)) > size:
        level += 1
        r = _rect_down(r)
    c = _center(r)
    to = [_rotate_point(c, p, angle) for p in ((r[0], r[1]), (r[2], r[1]), (r[0], r[3]))]
    q = np.array([[p[0] for p in to], [p[1] for p in to]], np.float64)
    m, b = affine_from_pinv(_chip_pinv(rows, cols), q)
    src = sub if level == -1 else levels[level]
    return _bilinear(src, m, b, rows, cols)


def extract_face_chip(image: np.ndarray, landmarks, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """``dlib.get_face_chip(img, det, size, padding)`` for the 5 landmarks ``landmarks`` (5, 2)
    of ``det``: a uint8 (size, size, 3) chip for an RGB image (size, size) for a grey one."""
    return extract_image_chip(image, face_chip_details(landmarks, size, padding))


def align_faces(image, rects, predictor: ShapePredictor | None = None, size: int = CHIP_SIZE,
                padding: float = CHIP_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks and chips of several faces: ``image`` one image (all rects on it) or one per
    rect; ``rects`` (n, 4) dlib inclusive (l, t, r, b). Returns (chips (n, size, size, 3) uint8,
    landmarks (n, 5, 2) float32)."""
    if predictor is None:
        predictor = ShapePredictor.load()
    rects = np.asarray(rects, np.int64).reshape(-1, 4)
    images = [image] * len(rects) if isinstance(image, np.ndarray) else list(image)
    pts = predictor.predict_many(images, rects)
    chips = [extract_face_chip(img, p, size, padding) for img, p in zip(images, pts)]
    if not chips:
        shape = (0, size, size) + (np.asarray(image).shape[2:] if isinstance(image, np.ndarray) else (3,))
        return np.zeros(shape, np.uint8), pts
    return np.stack(chips), pts


__all__ = ["MEAN_FACE_5", "ChipDetails", "align_faces", "chip_details_from_points", "extract_face_chip",
           "extract_image_chip", "face_chip_details", "pyramid_down2"]
