"""What every face detector shares: its settings, its raw boxes, the face gate, and the map of its
boxes into the convention a later step expects.

A detector (registry :data:`DETECTORS`, defined here so the detectors register into it without
importing their package; ``facerec.detect`` imports them all) turns a batch of RGB photos into
:class:`Faces` -- every box it found, in *its own* box convention (what a Haar window encloses is
not what an MTCNN box encloses), with a confidence. :meth:`FaceDetector.find` then applies the
*face gate* of :class:`DetectorConfig` (minimum confidence, minimum face size): a box that fails it
is rejected with its reason (``low_confidence``, ``too_small``) and never reaches a model.

Steps after detection expect a box convention of their own: dlib's 5-point shape predictor was
trained on boxes of dlib's HOG detector, so the landmark step asks for ``"dlib"`` boxes, and the
study's square crop for the box the crop was defined on. :meth:`FaceDetector.boxes_in` maps a
detector's boxes into such a convention with the :class:`BoxMap` the detector declares for it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from facerec.errors import ConfigError
from facerec.registry import Registry

DETECTORS: Registry = Registry("detector")

REJECT_REASONS = ("too_small", "low_confidence")
"""Why the gate rejects a box, in the order a photo's drop reason is chosen when every box of it
was rejected: a face that is too small is a face, so its reason is the more useful one."""

DLIB = "dlib"
"""The box convention of dlib's frontal face detector, which dlib's 5-point shape predictor was
trained on (the landmark step's input)."""


@dataclass(frozen=True)
class BoxMap:
    """An affine map of face boxes between two conventions, fitted on boxes of the same faces:
    centre ``(cx + dx * w, cy + dy * h)``, size ``(sw * w, sh * h)`` (x, y, w, h boxes)."""

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def __call__(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        w, h = b[:, 2], b[:, 3]
        cx = b[:, 0] + w / 2 + self.dx * w
        cy = b[:, 1] + h / 2 + self.dy * h
        nw, nh = self.sw * w, self.sh * h
        return np.stack([cx - nw / 2, cy - nh / 2, nw, nh], axis=1)

    def inverse(self, boxes: np.ndarray) -> np.ndarray:
        """The boxes this map would have mapped onto ``boxes``."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        w, h = b[:, 2] / self.sw, b[:, 3] / self.sh
        cx = b[:, 0] + b[:, 2] / 2 - self.dx * w
        cy = b[:, 1] + b[:, 3] / 2 - self.dy * h
        return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)



@dataclass(frozen=True)
class DetectorConfig:
    """Which detector finds faces, with what settings, and the face gate behind it. Validated on
    construction (before any worker starts); ``None`` takes the detector's default, which was
    chosen by measurement (its class says how).

    - ``name``: a registered detector (``facerec.detect.DETECTORS``): ``mtcnn`` (default) or
      ``haar`` (the study's two-pass cascade).
    - ``min_confidence``: the gate's lowest accepted detector score in [0, 1] (Haar gives none: 0).
    - ``min_face``: the gate's smallest accepted face, the shorter side of the detector's box in the
      photo's pixels; the detector does not look for faces much smaller than it.
    - ``scale_step``: the ratio between two scales of the detector's image pyramid (> 1; Haar's
      ``scaleFactor``, 1 / MTCNN's ``factor``): smaller finds more faces, slower.
    - ``min_neighbors``: Haar only (the cascade's ``minNeighbors``).
    - ``detect_max_side``: a photo is scanned at most at this size and the boxes are mapped back, so
      a 4000 px photo costs what a ``detect_max_side`` one does.
    """

    name: str = "mtcnn"
    min_confidence: float | None = None
    min_face: int | None = None
    scale_step: float | None = None
    min_neighbors: int = 5
    detect_max_side: int = 640

    def __post_init__(self):
        cls = DETECTORS.get(self.name)  # ConfigError listing the detectors
        if self.min_confidence is not None and not (_is_num(self.min_confidence) and 0.0 <= self.min_confidence <= 1.0):
            raise ConfigError("min_confidence", self.min_confidence, "a detector score in [0, 1], or None for the "
                              f"detector's default ({cls.defaults['min_confidence']} for {self.name})")
        if self.min_face is not None and not (_is_int(self.min_face) and 8 <= self.min_face <= 4096):
            raise ConfigError("min_face", self.min_face, "an integer number of pixels in [8, 4096], or None for the "
                              f"detector's default ({cls.defaults['min_face']} for {self.name})")
        if self.scale_step is not None and not (_is_num(self.scale_step) and 1.0 < self.scale_step <= 2.0):
            raise ConfigError("scale_step", self.scale_step, "a ratio in (1, 2] between pyramid scales, e.g. "
                              f"{cls.defaults['scale_step']} (the {self.name} default)")
        if not (_is_int(self.min_neighbors) and self.min_neighbors >= 0):
            raise ConfigError("min_neighbors", self.min_neighbors, "an integer >= 0 (Haar's minNeighbors)")
        if not (_is_int(self.detect_max_side) and self.detect_max_side >= 64):
            raise ConfigError("detect_max_side", self.detect_max_side, "an integer >= 64 pixels")

    def resolved(self) -> "DetectorConfig":
        """The same config with every ``None`` replaced by the detector's default."""
        d = DETECTORS.get(self.name).defaults
        return DetectorConfig(self.name, _or(self.min_confidence, d["min_confidence"]), _or(self.min_face, d["min_face"]),
                              _or(self.scale_step, d["scale_step"]), self.min_neighbors, self.detect_max_side)

    def settings(self) -> dict:
        """Everything that decides which boxes come out (resolved): what crops, galleries and
        measurements record, and what a cache key hashes. ``detector_version`` moves when the
        detector's code or weights change what it finds."""
        r = self.resolved()
        out = {"detector": r.name, "detector_version": DETECTORS.get(r.name).version,
               "min_confidence": float(r.min_confidence), "min_face": int(r.min_face),
               "scale_step": float(r.scale_step), "detect_max_side": int(r.detect_max_side)}
        if r.name == "haar":
            out["min_neighbors"] = int(r.min_neighbors)
        return out

    def describe(self) -> str:
        s = self.settings()
        return f"{s['detector']} (min confidence {s['min_confidence']:g}, min face {s['min_face']} px)"

    FIELDS: ClassVar[tuple[str, ...]] = ("detector", "min_confidence", "min_face", "scale_step", "min_neighbors",
                                         "detect_max_side")
    """The names of these settings as fields of the stage configs that embed them (PreprocessConfig,
    ServeConfig) and as command-line options: ``name`` is called ``detector`` there."""

    @classmethod
    def of(cls, obj) -> "DetectorConfig":
        """The detector config of a stage config (or argparse namespace) holding :data:`FIELDS`."""
        return cls(**{("name" if f == "detector" else f): getattr(obj, f) for f in cls.FIELDS if hasattr(obj, f)})

    def as_fields(self) -> dict:
        """These settings under the :data:`FIELDS` names (to build a stage config from)."""
        return {f: getattr(self, "name" if f == "detector" else f) for f in self.FIELDS}

    def build(self) -> "FaceDetector":
        return DETECTORS.get(self.name)(self.resolved())

    @classmethod
    def from_settings(cls, settings: dict) -> "DetectorConfig":
        """The config a :meth:`settings` dict was made from (artifacts record settings)."""
        return cls(settings["detector"], settings.get("min_confidence"), settings.get("min_face"),
                   settings.get("scale_step"), int(settings.get("min_neighbors", 5)),
                   int(settings.get("detect_max_side", 640)))


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _or(v, default):
    return default if v is None else v


@dataclass
class Faces:
    """Every box one detector found in one photo, before the gate: ``boxes`` (n, 4) float64
    x, y, w, h in the photo's pixels, in the detector's convention; ``scores`` (n,) in [0, 1]
    (1.0 where the detector gives none, as Haar); ``info``: detector-specific facts for the manifest
    (Haar: the pass used and the faces of each pass)."""

    boxes: np.ndarray
    scores: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(self.scores) != len(self.boxes):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class Found:
    """The gate's verdict on one photo: ``faces`` the accepted boxes, largest first (their
    ``scores`` alike), ``rejected`` how many boxes each reason turned away, ``info`` the
    detector's. ``reason`` is None when a face was accepted, else the photo's drop reason."""

    boxes: np.ndarray
    scores: np.ndarray
    rejected: dict
    info: dict

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def reason(self) -> str | None:
        if len(self.boxes):
            return None
        for r in REJECT_REASONS:
            if self.rejected.get(r):
                return r
        return "no_face"

    def detail(self) -> str:
        parts = [f"{n} box(es) {r.replace('_', ' ')}" for r, n in self.rejected.items() if n]
        return ", ".join(parts)


class FaceDetector:
    """Base of the registered detectors. A subclass sets ``name``, ``version``, ``defaults``
    (``min_confidence``, ``min_face``, ``scale_step``), ``box_maps`` (convention -> :class:`BoxMap`
    of its boxes into it; its own convention is the identity) and implements :meth:`detect_many`.
    Instances are picklable (Ray ships them to actors) and load their models on first use."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    defaults: ClassVar[dict] = {}
    box_maps: ClassVar[dict[str, BoxMap]] = {}

    def __init__(self, config: DetectorConfig):
        self.config = config.resolved()

    def detect_many(self, images: Sequence[np.ndarray]) -> list[Faces]:
        """Every box of each RGB uint8 photo (``H x W x 3``), before the gate."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Make what the detector loads (an export, a cache) in this process, so the workers that
        run it only read it; called by a driver before Ray starts them."""

    def files(self) -> dict[str, bytes]:
        """What :meth:`prepare` made, as ``{file name: bytes}``, for a process on another node whose
        cache lacks it (a Serve replica: :mod:`facerec.serve.shipped`); {} when the detector loads
        nothing of its own making."""
        return {}

    def install(self, files: dict[str, bytes]) -> list:
        """Write :meth:`files` of another process where this process's detector reads them, unless
        what is there already passes the detector's checks; the paths written."""
        return []

    def find_many(self, images: Sequence[np.ndarray]) -> list[Found]:
        """:meth:`detect_many`, then the face gate of the config, per photo."""
        return [self.gate(f) for f in self.detect_many(images)]

    def find(self, image: np.ndarray) -> Found:
        return self.find_many([image])[0]

    def gate(self, faces: Faces) -> Found:
        side = np.minimum(faces.boxes[:, 2], faces.boxes[:, 3])
        small = side < self.config.min_face
        weak = ~small & (faces.scores < self.config.min_confidence)
        ok = ~(small | weak)
        boxes, scores = faces.boxes[ok], faces.scores[ok]
        order = np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")
        return Found(boxes[order], scores[order], {"too_small": int(small.sum()), "low_confidence": int(weak.sum())},
                     dict(faces.info))

    def boxes_in(self, convention: str | None, boxes: np.ndarray) -> np.ndarray:
        """``boxes`` (this detector's) in ``convention`` (None: as they are)."""
        if convention is None or convention == self.name:
            return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        try:
            return self.box_maps[convention](boxes)
        except KeyError:
            raise ConfigError("box_convention", convention,
                              f"one the {self.name} detector maps its boxes into: {sorted(self.box_maps)}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({asdict(self.config)})"
