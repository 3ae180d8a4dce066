"""Face detection with OpenCV's pretrained frontal-face Haar cascade (Viola & Jones, CVPR 2001),
in the original study's two-pass scheme: pass 1 at the configured scan step (``scaleFactor``);
if that does not give exactly one face, pass 2 with the step halved (finer scale steps)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facerec.errors import ConfigError

CASCADE_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Detection:
    boxes: np.ndarray  # (n, 4) int32 x, y, w, h in the original image
    pass_used: int     # 1 or 2: the pass whose boxes these are
    faces_pass1: int
    faces_pass2: int   # -1 when pass 2 did not run

    @property
    def reason(self) -> str | None:
        """None when exactly one face was found, else the drop-manifest reason."""
        if len(self.boxes) == 1:
            return None
        return "no_face" if max(self.faces_pass1, self.faces_pass2) == 0 else "several_faces"


class HaarDetector:
    """Picklable wrapper around ``cv2.CascadeClassifier`` (the classifier itself is not picklable,
    so each process loads it once on first use).

    ``detect_max_side``: images are scanned at most at this size (boxes are mapped back), so a
    4000-px photo costs what a 640-px one does; the cascade's smallest window is 24 px anyway.
    """

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24,
                 detect_max_side: int = 640):
        if not (1.0 < scale_factor <= 2.0):
            raise ConfigError("scale_factor", scale_factor, "a number in (1, 2], e.g. 1.1 (the scan step between scales)")
        if min_neighbors < 0:
            raise ConfigError("min_neighbors", min_neighbors, "an integer >= 0")
        if min_size < 1:
            raise ConfigError("min_size", min_size, "a positive number of pixels")
        if detect_max_side < 64:
            raise ConfigError("detect_max_side", detect_max_side, "at least 64 pixels")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.detect_max_side = int(detect_max_side)
        self._cascade = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cascade"] = None
        return state

    @property
    def cascade(self) -> cv2.CascadeClassifier:
        if self._cascade is None:
            path = cv2.data.haarcascades + CASCADE_FILE
            cascade = cv2.CascadeClassifier(path)
            if cascade.empty():
                raise RuntimeError(f"OpenCV could not load its Haar cascade from {path}; reinstall opencv-python-headless<5")
            self._cascade = cascade
        return self._cascade

    def _gray(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        h, w = gray.shape[:2]
        scale = min(1.0, self.detect_max_side / max(h, w))
        if scale < 1.0:
            gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        return gray, scale

    def _scan(self, gray: np.ndarray, scale: float, scale_factor: float) -> np.ndarray:
        boxes = self.cascade.detectMultiScale(
            gray, scaleFactor=scale_factor, minNeighbors=self.min_neighbors, minSize=(self.min_size, self.min_size)
        )
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return np.round(boxes / scale).astype(np.int32)

    def detect(self, rgb: np.ndarray) -> Detection:
        """Two-pass detection of the study; see :class:`Detection` for the outcome."""
        gray, scale = self._gray(rgb)
        first = self._scan(gray, scale, self.scale_factor)
        if len(first) == 1:
            return Detection(first, 1, 1, -1)
        second = self._scan(gray, scale, 1.0 + (self.scale_factor - 1.0) / 2.0)
        if len(second) == 1:
            return Detection(second, 2, len(first), 1)
        boxes, used = (second, 2) if len(second) >= len(first) else (first, 1)
        return Detection(boxes, used, len(first), len(second))

    def detect_all(self, rgb: np.ndarray) -> np.ndarray:
        """Every face of one pass, largest first (for serving photos with several people)."""
        gray, scale = self._gray(rgb)
        boxes = self._scan(gray, scale, self.scale_factor)
        if len(boxes) == 0:
            boxes = self._scan(gray, scale, 1.0 + (self.scale_factor - 1.0) / 2.0)
        return largest_first(boxes)


def largest_first(boxes: np.ndarray) -> np.ndarray:
    """Boxes (x, y, w, h) ordered by area, largest first (ties keep their order)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")]


def crop_face(rgb: np.ndarray, box, margin: float = 0.2, size: int = 218) -> np.ndarray:
    """A square crop centred on ``box`` (x, y, w, h), enlarged by ``margin`` of the box side on
    every side, padded with the edge colour where it leaves the image, resized to size x size."""
    if margin < 0:
        raise ConfigError("margin", margin, "a fraction >= 0 of the face box (e.g. 0.2)")
    if size < 8:
        raise ConfigError("size", size, "a crop side of at least 8 pixels")
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(1, int(round(side)))
    H, W = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
    src = rgb
    if pad:
        src = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    patch = src[y0:y0 + s, x0:x0 + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(patch, (size, size), interpolation=interp))
