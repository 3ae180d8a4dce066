"""Synthetic CelebA: procedurally drawn faces in the official CelebA folder layout.

The real pipeline (Haar cropping -> metric learning -> retrieval) needs photos of many people,
several photos each, with identity and attribute labels. This module draws such a set with
numpy + OpenCV so the whole system runs on a fresh machine with no download:

```
ROOT/
  img_celeba/000001.jpg ...     JPEG, image_size (default 178 x 218, the CelebA aligned size)
  identity_CelebA.txt           "000001.jpg 17"                       (LF, like the official file)
  list_attr_celeba.txt          count, the 40 names, "000001.jpg -1  1 ..." (CRLF, like the official file)
  list_eval_partition.txt       "000001.jpg 0"  0 train / 1 val / 2 test, identity-disjoint ~80/10/10
  SYNTHETIC.json                generator version and parameters; "complete": true once all is written
```

Every identity has its own geometry (face shape and width, jaw, eye spacing and size, brow
thickness and arch, nose length and width, mouth width and lips, skin tone, hair colour and
style, glasses, beard) and every image its own nuisance (in-plane rotation, shift and scale,
lighting gradient and brightness, expression, background colour and texture, clothes, blur,
sensor noise, JPEG quality). Identity ranges are several times wider than within-identity
jitter so a small CNN can tell people apart, as in the CelebA identity protocol of
Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015.

The drawing is tuned so that OpenCV's pretrained frontal-face Haar cascade (Viola & Jones,
"Rapid Object Detection using a Boosted Cascade of Simple Features", CVPR 2001; Lienhart &
Maydt, ICIP 2002), run as the preprocess stage runs it (scale 1.1, 5 neighbours, 24 px), finds
exactly one face in ~98% of images (97.9-98.6% over seeds 0-4 at the defaults; the real
celeba-sample gets ~84%). The cascade's features are dark eye bands under a lighter forehead,
a light nose bridge between darker eyes, a dark mouth line and the cheek outline against the
background, so those contrasts are drawn on purpose: shaded eye sockets, a lit bridge, light
cheeks, proportions inside the range of real faces, and a background whose brightness differs
from the skin's. Each identity is also screened once: a neutral photo the cascade misses
means the person is redrawn (about 1 in 40).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ConfigError
from facerec.io import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

# Bump whenever the drawing or the file format changes: a cached folder with another version
# is regenerated instead of being silently reused.
SYNTH_VERSION = "synthetic-v1.0"
MARKER_FILE = "SYNTHETIC.json"
IMAGE_DIR = "img_celeba"
IDENTITY_FILE = "identity_CelebA.txt"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"

# Design frame: every length below is in pixels of a 178 x 218 image (CelebA's aligned size);
# other sizes scale the whole drawing.
_DESIGN_W, _DESIGN_H = 178.0, 218.0
_MIN_SIDE, _MAX_SIDE = 96, 2048

_HAIR_COLOURS = {  # RGB 0..1; the name is the CelebA attribute it sets
    "Black_Hair": (0.10, 0.08, 0.07),
    "Brown_Hair": (0.36, 0.22, 0.12),
    "Blond_Hair": (0.82, 0.68, 0.42),
    "Gray_Hair": (0.62, 0.62, 0.60),
}
_IRIS_COLOURS = ((0.25, 0.15, 0.08), (0.20, 0.35, 0.55), (0.25, 0.40, 0.22), (0.40, 0.28, 0.12))
# Skin tones from pale to dark (RGB 0..1); an identity's tone is a point on this ramp.
_SKIN_RAMP = np.array(
    [(0.96, 0.84, 0.76), (0.92, 0.74, 0.62), (0.80, 0.60, 0.45), (0.62, 0.44, 0.31), (0.42, 0.29, 0.20)],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of one synthetic dataset; validated before any file is written."""

    n_identities: int = 60
    images_per_identity: int = 15
    seed: int = 0
    image_size: tuple[int, int] = (178, 218)  # (width, height), like PIL / CelebA docs

    def __post_init__(self) -> None:
        for name, low in (("n_identities", 2), ("images_per_identity", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(name, value, f"an integer >= {low} (retrieval needs several people with several photos each)")
        if self.n_identities * self.images_per_identity > 999_999:
            raise ConfigError(
                "n_identities*images_per_identity", self.n_identities * self.images_per_identity,
                "at most 999999 images (CelebA file names have six digits)",
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError("seed", self.seed, "a non-negative integer")
        size = self.image_size
        ok = (
            isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
            and all(_MIN_SIDE <= v <= _MAX_SIDE for v in size)
        )
        if not ok:
            raise ConfigError(
                "image_size", size, f"(width, height), two integers in [{_MIN_SIDE}, {_MAX_SIDE}], e.g. (178, 218)"
            )
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "n_identities", int(self.n_identities))
        object.__setattr__(self, "images_per_identity", int(self.images_per_identity))
        object.__setattr__(self, "seed", int(self.seed))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d


# --------------------------------------------------------------------------------------------
# Identity and image parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Everything that stays the same across one person's photos (design-frame pixels)."""

    label: int
    male: bool
    young: bool
    face_a: float          # half width of the cranium / cheek ellipse
    face_b_top: float      # half height above the face centre
    face_b_bot: float      # half height below (jaw)
    jaw_ratio: float       # jaw half width / face_a
    skin: tuple[float, float, float]
    skin_t: float          # position on the pale -> dark ramp
    hair: str              # key of _HAIR_COLOURS
    hair_style: str        # "short" | "long" | "bald"
    bangs: bool
    wavy: bool
    hairline: float        # fraction of face_b_top where the hair starts (bigger = higher)
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_h: float
    iris: tuple[float, float, float]
    brow_gap: float
    brow_thick: float
    brow_arch: float
    nose_len: float
    nose_w: float
    pointy_nose: bool
    mouth_y: float
    mouth_w: float
    lip_thick: float
    beard: str             # "none" | "stubble" | "mustache" | "goatee" | "full"
    sideburns: bool
    glasses: bool
    glasses_round: bool
    lipstick: bool
    makeup: bool
    rosy: bool
    earrings: bool
    necklace: bool
    necktie: bool
    hat: bool
    double_chin: bool
    eye_bags: bool
    high_cheekbones: bool
    smile_rate: float
    open_rate: float
    attractive: bool


@dataclass(frozen=True)
class Shot:
    """What changes from one photo of a person to the next."""

    angle: float           # in-plane rotation, degrees
    scale: float
    dx: float
    dy: float
    yaw: float             # features slide sideways inside the face: a cheap out-of-plane turn
    smile: bool
    mouth_open: bool
    light_dir: float       # radians
    light_strength: float
    brightness: float
    background: tuple[float, float, float]
    background_texture: float
    clothes: tuple[float, float, float]
    blur_sigma: float
    blurry: bool
    noise_sigma: float
    jpeg_quality: int


_MIN_BG_CONTRAST = 0.25  # luma gap between background and skin


def _luma(rgb) -> float:
    """ITU-R BT.601 luma, the weights of cv2.COLOR_RGB2GRAY that the cascade sees."""
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_identity(rng: np.random.Generator, label: int) -> Identity:
    """Draw one person. Ranges are wide (a face 78-102 px across, eyes 25-41 px apart, skin from
    pale to dark) so that identity differences dominate the per-photo jitter of :func:`sample_shot`
    (a few degrees, pixels and percent)."""
    male = bool(rng.random() < 0.45)
    skin_t = float(rng.beta(1.6, 2.2))
    pos = skin_t * (len(_SKIN_RAMP) - 1)
    i = min(int(pos), len(_SKIN_RAMP) - 2)
    skin = _SKIN_RAMP[i] * (1 - (pos - i)) + _SKIN_RAMP[i + 1] * (pos - i)
    skin = np.clip(skin + rng.normal(0, 0.02, 3), 0, 1)

    young = bool(rng.random() < 0.72)
    hair_p = {"Black_Hair": 0.32, "Brown_Hair": 0.32, "Blond_Hair": 0.2, "Gray_Hair": 0.16}
    if young:
        hair_p["Gray_Hair"] = 0.02
    names = list(hair_p)
    p = np.array([hair_p[n] for n in names])
    hair = names[int(rng.choice(len(names), p=p / p.sum()))]

    if male:
        hair_style = "bald" if rng.random() < (0.06 if young else 0.22) else ("long" if rng.random() < 0.12 else "short")
        beard = str(rng.choice(["none", "stubble", "mustache", "goatee", "full"], p=[0.45, 0.15, 0.1, 0.12, 0.18]))
    else:
        hair_style = "long" if rng.random() < 0.8 else "short"
        beard = "none"
    face_a = _u(rng, 39.0, 51.0)
    eye_w = _u(rng, 7.0, 11.0)
    # Proportions stay inside what the cascade learnt from real faces (eyes 0.32-0.40 face widths
    # apart, eyes to mouth 0.35-0.48 face widths): wider spacing measurably loses detections.
    eye_dx = _u(rng, 0.32, 0.40) * face_a
    eye_y = _u(rng, -14.0, -6.0)
    drop = _u(rng, 0.70, 0.95) * face_a
    nose_len = _u(rng, 0.60, 0.74) * drop
    return Identity(
        label=label,
        male=male,
        young=young,
        face_a=face_a,
        face_b_top=_u(rng, 50.0, 62.0),
        face_b_bot=eye_y + drop * _u(rng, 1.5, 1.75),
        jaw_ratio=_u(rng, 0.68, 0.95),
        skin=tuple(float(c) for c in skin),
        skin_t=skin_t,
        hair=hair,
        hair_style=hair_style,
        bangs=bool(hair_style != "bald" and rng.random() < 0.25),
        wavy=bool(hair_style == "long" and rng.random() < 0.45),
        hairline=_u(rng, 0.55, 0.72) if not (male and rng.random() < 0.2) else _u(rng, 0.78, 0.88),
        eye_dx=eye_dx,
        eye_y=eye_y,
        eye_w=eye_w,
        eye_h=_u(rng, 0.28, 0.46) * eye_w,
        # light irises only on lighter skin: on dark skin a pale iris is brighter than the cheeks
        iris=_IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS) if skin_t < 0.5 else 1))],
        brow_gap=_u(rng, 8.0, 13.0),
        brow_thick=_u(rng, 2.0, 5.5),
        brow_arch=_u(rng, 0.0, 6.0),
        nose_len=nose_len,
        nose_w=_u(rng, 6.0, 12.0),
        pointy_nose=bool(rng.random() < 0.3),
        mouth_y=drop - nose_len,
        mouth_w=_u(rng, 0.19, 0.27) * face_a,
        lip_thick=_u(rng, 2.0, 5.0),
        beard=beard,
        sideburns=bool(male and beard == "full" and rng.random() < 0.6),
        glasses=bool(rng.random() < 0.15),
        glasses_round=bool(rng.random() < 0.5),
        lipstick=bool(not male and rng.random() < 0.5),
        makeup=bool(not male and rng.random() < 0.4),
        rosy=bool(rng.random() < 0.1),
        earrings=bool(not male and rng.random() < 0.3),
        necklace=bool(not male and rng.random() < 0.15),
        necktie=bool(male and rng.random() < 0.1),
        hat=bool(rng.random() < 0.05),
        double_chin=bool(rng.random() < 0.06),
        eye_bags=bool(rng.random() < 0.2),
        high_cheekbones=bool(rng.random() < 0.45),
        smile_rate=_u(rng, 0.2, 0.8),
        open_rate=_u(rng, 0.2, 0.7),
        attractive=bool(rng.random() < 0.5),
    )


def sample_shot(rng: np.random.Generator, person: Identity) -> Shot:
    """Draw the nuisance of one photo: small pose, light, expression, background, camera."""
    smile = bool(rng.random() < person.smile_rate)
    blurry = bool(rng.random() < 0.05)
    # The face's outline is one of the contrasts the cascade uses: a background as bright as
    # the skin is pushed lighter or darker so the head stands out, as a photographer would.
    background = rng.uniform(0.05, 0.95, 3)
    skin = _luma(person.skin)
    gap = _luma(background) - skin
    if abs(gap) < _MIN_BG_CONTRAST:
        go_up = (gap >= 0 and skin + _MIN_BG_CONTRAST <= 0.9) or skin - _MIN_BG_CONTRAST < 0.08
        target = skin + _MIN_BG_CONTRAST if go_up else skin - _MIN_BG_CONTRAST
        background = np.clip(background + (target - _luma(background)), 0.02, 0.98)
        if abs(_luma(background) - skin) < _MIN_BG_CONTRAST:  # clipped: fall back to a grey of that level
            background = np.full(3, target)
    return Shot(
        angle=float(rng.normal(0, 3.0)),
        scale=_u(rng, 0.94, 1.06),
        dx=float(rng.normal(0, 3.0)),
        dy=float(rng.normal(0, 3.0)),
        yaw=float(rng.normal(0, 1.2)),
        smile=smile,
        mouth_open=bool(rng.random() < person.open_rate),
        light_dir=_u(rng, 0.0, 2 * np.pi),
        light_strength=_u(rng, 0.0, 0.35),
        brightness=_u(rng, 0.85, 1.12),
        background=tuple(float(c) for c in background),
        background_texture=_u(rng, 0.02, 0.15),
        clothes=tuple(float(c) for c in rng.uniform(0.05, 0.9, 3)),
        blur_sigma=_u(rng, 1.8, 2.4) if blurry else _u(rng, 0.6, 1.1),
        blurry=blurry,
        noise_sigma=_u(rng, 0.005, 0.025),
        jpeg_quality=int(rng.integers(82, 96)),
    )


def shot_attributes(person: Identity, shot: Shot) -> dict[str, int]:
    """The 40 CelebA attributes (-1/1) of a drawn photo: those the drawing shows follow it,
    the rest ("Attractive") are a per-identity coin. Thresholds on continuous traits put each
    attribute near its frequency in CelebA (Liu et al., ICCV 2015)."""
    a = {
        "5_o_Clock_Shadow": person.beard == "stubble",
        "Arched_Eyebrows": person.brow_arch > 4.4,
        "Attractive": person.attractive,
        "Bags_Under_Eyes": person.eye_bags,
        "Bald": person.hair_style == "bald",
        "Bangs": person.bangs and not person.hat,
        "Big_Lips": person.lip_thick > 4.3,
        "Big_Nose": person.nose_len * person.nose_w > 262,
        "Black_Hair": person.hair == "Black_Hair" and person.hair_style != "bald",
        "Blond_Hair": person.hair == "Blond_Hair" and person.hair_style != "bald",
        "Blurry": shot.blurry,
        "Brown_Hair": person.hair == "Brown_Hair" and person.hair_style != "bald",
        "Bushy_Eyebrows": person.brow_thick > 5.0,
        "Chubby": person.face_a > 48.5 and person.jaw_ratio > 0.87,
        "Double_Chin": person.double_chin,
        "Eyeglasses": person.glasses,
        "Goatee": person.beard == "goatee",
        "Gray_Hair": person.hair == "Gray_Hair" and person.hair_style != "bald",
        "Heavy_Makeup": person.makeup,
        "High_Cheekbones": person.high_cheekbones,
        "Male": person.male,
        "Mouth_Slightly_Open": shot.mouth_open,
        "Mustache": person.beard in ("mustache", "full"),
        "Narrow_Eyes": person.eye_h / person.eye_w < 0.30,
        "No_Beard": person.beard in ("none",),
        "Oval_Face": (person.face_b_bot + person.face_b_top) / (2 * person.face_a) > 1.22 and person.jaw_ratio < 0.85,
        "Pale_Skin": person.skin_t < 0.12,
        "Pointy_Nose": person.pointy_nose,
        "Receding_Hairline": person.hairline > 0.75 and person.hair_style != "bald",
        "Rosy_Cheeks": person.rosy,
        "Sideburns": person.sideburns,
        "Smiling": shot.smile,
        "Straight_Hair": person.hair_style == "long" and not person.wavy,
        "Wavy_Hair": person.wavy,
        "Wearing_Earrings": person.earrings,
        "Wearing_Hat": person.hat,
        "Wearing_Lipstick": person.lipstick,
        "Wearing_Necklace": person.necklace,
        "Wearing_Necktie": person.necktie,
        "Young": person.young,
    }
    return {name: 1 if a[name] else -1 for name in ATTRIBUTE_NAMES}


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

_SHIFT = 4  # OpenCV fixed-point drawing: coordinates carry 4 fractional bits (1/16 px)
_ONE = 1 << _SHIFT


class _Painter:
    """Float RGB canvas plus the similarity transform (pose) from the face's design frame,
    origin at the face centre, to image pixels. Each layer is an anti-aliased 8-bit mask,
    optionally blurred, alpha-blended in a colour."""

    def __init__(self, height: int, width: int, centre: tuple[float, float], scale: float, angle_deg: float):
        self.h, self.w = height, width
        self.scale, self.angle = scale, angle_deg
        t = np.deg2rad(angle_deg)
        self.m = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]], dtype=np.float64)
        self.c = np.asarray(centre, dtype=np.float64)
        self.img = np.zeros((height, width, 3), np.float32)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        inv = np.linalg.inv(self.m).astype(np.float32)
        dx, dy = xs - np.float32(self.c[0]), ys - np.float32(self.c[1])
        # Design-frame coordinates of every pixel, for shading that must turn with the head.
        self.u = inv[0, 0] * dx + inv[0, 1] * dy
        self.v = inv[1, 0] * dx + inv[1, 1] * dy

    def _pts(self, pts) -> np.ndarray:
        p = np.atleast_2d(np.asarray(pts, dtype=np.float64))
        return np.round((self.c + p @ self.m.T) * _ONE).astype(np.int32)

    def _thick(self, t: float) -> int:
        return max(1, int(round(t * self.scale)))

    def mask(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.uint8)

    def ellipse(self, m, centre, axes, angle=0.0, start=0.0, end=360.0, thickness=-1.0):
        c = self._pts(centre)[0]
        ax = np.round(np.maximum(np.asarray(axes, np.float64), 0.3) * self.scale * _ONE).astype(int)
        th = -1 if thickness < 0 else self._thick(thickness)
        cv2.ellipse(m, (int(c[0]), int(c[1])), (int(ax[0]), int(ax[1])), angle + self.angle, start, end, 255, th,
                    cv2.LINE_AA, _SHIFT)
        return m

    def poly(self, m, pts):
        cv2.fillPoly(m, [self._pts(pts)], 255, cv2.LINE_AA, _SHIFT)
        return m

    def line(self, m, pts, thickness: float, closed: bool = False):
        cv2.polylines(m, [self._pts(pts)], closed, 255, self._thick(thickness), cv2.LINE_AA, _SHIFT)
        return m

    def paint(self, m: np.ndarray, colour, opacity: float = 1.0, blur: float = 0.0, where: np.ndarray | None = None):
        """Blend ``colour`` (an RGB triple, or an HxWx3 texture) through mask ``m``."""
        # Work on the mask's bounding box only (plus the blur's reach): most layers are small.
        x, y, bw, bh = cv2.boundingRect(m)
        if bw == 0 or bh == 0:
            return
        pad = int(np.ceil(3 * blur * self.scale)) + 1 if blur > 0 else 0
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(self.w, x + bw + pad), min(self.h, y + bh + pad)
        a = m[y0:y1, x0:x1].astype(np.float32) * np.float32(opacity / 255.0)
        if blur > 0:
            a = cv2.GaussianBlur(a, (0, 0), blur * self.scale)
        if where is not None:
            a = a * where[y0:y1, x0:x1]
        a = a[..., None]
        roi = self.img[y0:y1, x0:x1]
        roi *= 1.0 - a
        colour = np.asarray(colour, np.float32)
        roi += a * (colour[y0:y1, x0:x1] if colour.ndim == 3 else colour)

    def shade(self, factor: np.ndarray, where: np.ndarray | None = None):
        """Multiply the canvas by ``factor`` (HxW), restricted to the soft mask ``where``."""
        f = factor if where is None else 1.0 + (factor - 1.0) * where
        self.img *= f[..., None]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency texture in [-1, 1]: a coarse random grid, bicubically upsampled."""
    g = rng.uniform(-1, 1, (cells[1], cells[0])).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _scaled(colour, k: float) -> tuple[float, float, float]:
    return tuple(float(np.clip(c * k, 0, 1)) for c in colour)


def render(person: Identity, shot: Shot, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Draw one photo; returns an HxWx3 uint8 RGB array of ``size`` = (width, height)."""
    w, h = size
    s = min(w / _DESIGN_W, h / _DESIGN_H)
    centre = (w / 2 + shot.dx * s, h * 0.53 + shot.dy * s)
    p = _Painter(h, w, centre, s * shot.scale, shot.angle)

    # Background: a colour, a vertical gradient and a blotchy texture, like an out-of-focus room.
    bg = np.asarray(shot.background, np.float32)
    grad = np.linspace(1.08, 0.9, h, dtype=np.float32)[:, None, None]
    tex = np.stack([_smooth_noise(rng, h, w, (5, 6)) for _ in range(3)], -1) * shot.background_texture
    p.img[:] = np.clip(bg * grad + tex, 0, 1)

    skin = np.asarray(person.skin, np.float32)
    hair = np.asarray(_HAIR_COLOURS[person.hair], np.float32)
    # Light hair keeps darker brows (as in life), so the brow-eye band stays darker than the cheeks.
    brow_col = {"Blond_Hair": (0.42, 0.30, 0.17), "Gray_Hair": (0.33, 0.32, 0.30)}.get(person.hair, _scaled(hair, 0.8))
    a, bt, bb = person.face_a, person.face_b_top, person.face_b_bot
    ja = a * person.jaw_ratio
    hairy = person.hair_style != "bald"

    # Shoulders, clothes and neck.
    clothes = p.mask()
    p.ellipse(clothes, (0, bb + 70), (a * 2.3, 45))
    p.paint(clothes, shot.clothes)
    neck = p.poly(p.mask(), [(-ja * 0.62, bb * 0.4), (ja * 0.62, bb * 0.4), (ja * 0.7, bb + 32), (-ja * 0.7, bb + 32)])
    p.paint(neck, _scaled(skin, 0.78))
    if person.necktie:
        tie = p.poly(p.mask(), [(-4, bb + 33), (4, bb + 33), (8, bb + 95), (0, bb + 105), (-8, bb + 95)])
        p.ellipse(tie, (0, bb + 31), (5, 4))  # the knot
        p.paint(tie, (0.55, 0.08, 0.1))
    if person.necklace:
        p.paint(p.ellipse(p.mask(), (0, bb + 16), (ja * 0.65, 12), 0, 10, 170, 1.6), (0.85, 0.75, 0.3))

    # Hair is textured with strands: noise smeared along the fall of the hair.
    strands = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigmaX=0.6 * s, sigmaY=2.5 * s)
    strands *= 0.08 / max(float(strands.std()), 1e-6)
    hair_tex = hair[None, None, :] * (1.0 + strands[..., None])

    # Long hair falls behind the face onto the shoulders.
    if person.hair_style == "long":
        back = p.mask()
        top = -bt * 1.12
        if person.wavy:
            ys = np.linspace(top + 20, bb + 45, 24)
            left = [(-(a + 14) - 4 * np.sin(y / 6), y) for y in ys]
            right = [((a + 14) + 4 * np.sin(y / 6 + 1), y) for y in ys[::-1]]
            p.poly(back, left + right)
        else:
            p.poly(back, [(-(a + 12), top + 20), (a + 12, top + 20), (a + 16, bb + 30), (-(a + 16), bb + 30)])
            p.ellipse(back, (0, bb + 30), (a + 16, 16), 0, 0, 180)  # rounded ends
        p.ellipse(back, (0, -bt * 0.15), (a + 13, bt * 1.0))
        p.paint(back, hair_tex * 0.85, blur=0.6)

    # Ears, then the face: an upper half-ellipse (cranium) over a narrower lower one (jaw).
    ears = p.mask()
    for sx in (-1, 1):
        p.ellipse(ears, (sx * a * 0.98, person.eye_y + 6), (6, 11))
    p.paint(ears, _scaled(skin, 0.9))
    face = p.mask()
    p.ellipse(face, (0, 0), (a, bt), 0, 180, 360)
    p.ellipse(face, (0, 0), (a, bb * 0.35), 0, 0, 180)
    p.ellipse(face, (0, bb * 0.2), (ja + (a - ja) * 0.35, bb * 0.8), 0, 0, 180)
    p.ellipse(face, (0, 0), (ja, bb), 0, 0, 180)
    face_soft = cv2.GaussianBlur(face.astype(np.float32) / 255.0, (0, 0), 0.7 * p.scale)
    # skin is never flat: a faint blotchy tone variation
    mottle = 1.0 + 0.035 * _smooth_noise(rng, h, w, (7, 9))
    p.paint(face, skin[None, None, :] * mottle[..., None])
    # Round shading: the face darkens towards its outline as a lit sphere would.
    fx, fy, fw, fh = cv2.boundingRect((face_soft > 0).astype(np.uint8))
    box = (slice(fy, fy + fh), slice(fx, fx + fw))  # outside it the face weight is 0: skip the work
    u, v = p.u[box], p.v[box]
    r2 = (u / a) ** 2 + (v / np.where(v < 0, bt, bb)) ** 2
    p.img[box] *= (1.0 - 0.32 * np.clip(r2, 0, 1.3) ** 1.5 * face_soft[box])[..., None]
    if person.double_chin:
        p.paint(p.ellipse(p.mask(), (0, bb * 0.93), (ja * 0.55, 6), 0, 20, 160, 1.5), _scaled(skin, 0.65), blur=0.8)

    yaw = shot.yaw
    ey = person.eye_y
    # Cheekbones catch the light; rosy cheeks / blush are soft pink blobs.
    # Cheeks catch the light under the eye sockets (the bright row below Haar's dark eye band).
    cheeks = p.mask()
    for sx in (-1, 1):
        p.ellipse(cheeks, (sx * person.eye_dx * 0.9 + yaw, ey + person.nose_len * 0.55), (person.eye_w * 1.2, 6))
    p.paint(cheeks, (1, 1, 1), 0.14, blur=3.0)
    if person.high_cheekbones:
        for sx in (-1, 1):
            p.paint(p.ellipse(p.mask(), (sx * a * 0.55 + yaw, ey + 16), (9, 5), sx * 25), (1, 1, 1), 0.18, blur=3.0)
    if person.rosy or person.makeup:
        for sx in (-1, 1):
            p.paint(p.ellipse(p.mask(), (sx * a * 0.5 + yaw, ey + 22), (8, 6)), (0.85, 0.35, 0.4), 0.35, blur=3.0)

    # Beard layers sit on the jaw, under the mouth.
    tip_y = ey + person.nose_len
    my = tip_y + person.mouth_y
    if person.beard in ("stubble", "full", "goatee"):
        b = p.mask()
        if person.beard == "goatee":
            # a chin tuft below the lower lip, narrower than the mouth
            p.ellipse(b, (yaw * 0.8, my + person.lip_thick + 7), (person.mouth_w * 0.5, 6.5))
        else:
            # chin and jawline; the cheeks above the mouth stay clear except for a band along the jaw,
            # so the face keeps its light cheeks and a visible mouth (a dark lower face hides it from Haar)
            p.ellipse(b, (0, 0), (ja, bb), 0, 0, 180)
            inner = p.ellipse(p.mask(), (0, 0), (ja * 0.78, bb * 0.8), 0, 0, 180)
            b[(inner > 0) & (p.v < my - 3)] = 0
            b[p.v < tip_y - 2] = 0
        opacity = {"stubble": 0.35, "goatee": 0.75}.get(person.beard, 0.72)
        p.paint(b, hair_tex * 0.8, opacity, blur=1.2, where=face_soft)
        if person.sideburns:
            sb = p.mask()
            for sx in (-1, 1):
                p.poly(sb, [(sx * a * 0.98, ey - 5), (sx * a * 0.82, ey - 5), (sx * ja * 0.85, ey + 30), (sx * ja, ey + 30)])
            p.paint(sb, hair_tex * 0.7, 0.85, blur=0.8, where=face_soft)

    # Hair on top of the head; the forehead stays visible down from the hairline.
    if hairy and not person.hat:
        top = p.mask()
        p.ellipse(top, (0, -bt * 0.12), (a + 5, bt * 1.02), 0, 180, 360)
        p.ellipse(top, (0, -bt * 0.12), (a + 5, bt * 0.45), 0, 0, 180)
        hl = -bt * person.hairline
        # the forehead is a window cut out of the cap: its top edge is the hairline
        window = p.ellipse(p.mask(), (0, hl + bt * 1.1), (a * 0.9, bt * 1.1))
        top[window > 0] = np.minimum(top[window > 0], 255 - window[window > 0])
        if person.bangs:
            fringe = p.mask()
            xs = np.linspace(-a * 0.8, a * 0.8, 9)
            # the fringe stops above the brows: covering them hides the eye band from Haar
            low = min(hl + 12, ey - person.brow_gap - person.brow_arch - person.brow_thick - 4)
            pts = [(-a * 0.85, hl - 2)] + [(x, low - 3 * (i % 2)) for i, x in enumerate(xs)] + [(a * 0.85, hl - 2)]
            p.poly(fringe, pts)
            top = np.maximum(top, fringe)
        p.paint(top, hair_tex, blur=0.5)
        # a sheen band makes the hair read as a volume instead of a flat blob
        p.shade(1.0 + 0.25 * np.exp(-(((p.v + bt * 0.85) / 8.0) ** 2)), top.astype(np.float32) / 255)
    if person.hat:
        hat = p.mask()
        brim = min(-bt * 0.8, ey - person.brow_gap - person.brow_arch - 14)
        p.ellipse(hat, (0, brim), (a + 12, 6))
        p.ellipse(hat, (0, brim), (a * 0.85, bt * 0.5), 0, 180, 360)
        p.paint(hat, _scaled(shot.clothes, 0.6))

    # Eyes: a shaded socket (the dark band Haar's first features look for), white, iris, lid.
    ew, eh = person.eye_w, person.eye_h
    sockets = p.mask()
    for sx in (-1, 1):
        p.ellipse(sockets, (sx * person.eye_dx + yaw, ey - 1), (ew * 1.5, eh * 2.1 + 3))
    p.paint(sockets, _scaled(skin, 0.45), 0.8, blur=2.5)
    if person.makeup:
        shadow = p.mask()
        for sx in (-1, 1):
            p.ellipse(shadow, (sx * person.eye_dx + yaw, ey - eh * 0.8), (ew * 1.1, eh * 1.2))
        p.paint(shadow, (0.35, 0.2, 0.35), 0.5, blur=1.5)
    if person.eye_bags:
        bags = p.mask()
        for sx in (-1, 1):
            p.ellipse(bags, (sx * person.eye_dx + yaw, ey + eh + 2), (ew * 0.9, 3), 0, 0, 180, 1.5)
        p.paint(bags, _scaled(skin, 0.5), 0.7, blur=1.0)
    for sx in (-1, 1):
        ex = sx * person.eye_dx + yaw
        white = p.ellipse(p.mask(), (ex, ey), (ew, eh))
        # a sclera in shadow, not paper-white: at this scale the eye reads as a dark band
        p.paint(white, 0.55 * np.array([0.9, 0.88, 0.84], np.float32) + 0.3 * skin)
        iris = p.ellipse(p.mask(), (ex + yaw * 0.3, ey), (eh * 1.05, eh * 1.05))
        iris = (iris.astype(np.float32) * (white / 255.0)).astype(np.uint8)
        p.paint(iris, person.iris)
        p.paint(p.ellipse(p.mask(), (ex + yaw * 0.3, ey), (eh * 0.5, eh * 0.5)), (0.03, 0.03, 0.03))
        p.paint(p.ellipse(p.mask(), (ex, ey), (ew, eh), 0, 180, 360, 2.0), (0.06, 0.05, 0.04))
        if person.makeup or not person.male:
            p.paint(p.line(p.mask(), [(ex + sx * ew * 0.7, ey - eh * 0.6), (ex + sx * (ew + 3), ey - eh - 1.5)], 1.2),
                    (0.05, 0.04, 0.04))
    # Eyebrows: thick arcs in (darkened) hair colour.
    brows = p.mask()
    for sx in (-1, 1):
        ex = sx * person.eye_dx + yaw
        by = ey - person.brow_gap
        pts = [(ex - sx * ew * 1.1, by + 2), (ex - sx * ew * 0.2, by - person.brow_arch * 0.6),
               (ex + sx * ew * 0.5, by - person.brow_arch), (ex + sx * ew * 1.25, by + 1 - person.brow_arch * 0.3)]
        p.line(brows, pts, person.brow_thick)
    p.paint(brows, brow_col, 0.92, blur=0.5)

    # Nose: a lit bridge between the eyes, shaded sides, dark nostrils.
    nw = person.nose_w
    bridge = p.poly(p.mask(), [(yaw * 0.6 - 2.5, ey - 4), (yaw * 0.6 + 2.5, ey - 4), (yaw + 3, tip_y - 3), (yaw - 3, tip_y - 3)])
    p.paint(bridge, (1, 1, 1), 0.3, blur=1.5)
    sides = p.mask()
    for sx in (-1, 1):
        p.line(sides, [(yaw + sx * 4, ey + 2), (yaw + sx * (nw * 0.6), tip_y - 2)], 1.6)
    p.paint(sides, _scaled(skin, 0.7), 0.6, blur=1.2)
    tip = p.ellipse(p.mask(), (yaw * 1.2, tip_y - (2 if person.pointy_nose else 0)),
                    (nw * (0.35 if person.pointy_nose else 0.5), 4))
    p.paint(tip, (1, 1, 1), 0.15, blur=1.5)
    nostrils = p.mask()
    for sx in (-1, 1):
        p.ellipse(nostrils, (yaw * 1.2 + sx * nw * 0.38, tip_y + 1), (nw * 0.2, 1.6), sx * 15)
    p.paint(nostrils, _scaled(skin, 0.3), 0.9, blur=0.6)

    # Mustache over the lip.
    mw = person.mouth_w * (1.12 if shot.smile else 1.0)
    if person.beard in ("mustache", "full"):
        must = p.mask()
        p.ellipse(must, (yaw, my - person.lip_thick - 1.5), (mw * 0.95, 3.5))
        p.paint(must, hair_tex * 0.6, 0.9, blur=0.8)

    # Mouth: lips, a dark line (the last row of Haar features) or an open mouth.
    lip_col = (0.72, 0.12, 0.18) if person.lipstick else _scaled(skin * np.array([1.0, 0.72, 0.72], np.float32), 0.8)
    curve = 5.0 if shot.smile else 1.0
    mx = yaw
    if shot.mouth_open:
        opening = p.mask()
        p.ellipse(opening, (mx, my - curve * 0.3), (mw * 0.8, person.lip_thick + (4.0 if shot.smile else 3.0)), 0, 0, 360)
        p.paint(opening, lip_col)
        inner = p.ellipse(p.mask(), (mx, my - curve * 0.3), (mw * 0.62, person.lip_thick * 0.4 + 2.5))
        p.paint(inner, (0.18, 0.04, 0.05))
        if shot.smile:
            teeth = p.ellipse(p.mask(), (mx, my - curve * 0.3 - 1.5), (mw * 0.5, 1.6))
            p.paint(teeth, (0.93, 0.92, 0.86), 0.9)
    else:
        lips = p.mask()
        p.ellipse(lips, (mx, my - curve * 0.2), (mw * 0.85, person.lip_thick * 0.9 + 0.5))
        p.paint(lips, lip_col, blur=0.4)
        line = p.mask()
        xs = np.linspace(-mw, mw, 13)
        p.line(line, [(mx + x, my - curve * (x / mw) ** 2) for x in xs], 1.4)
        p.paint(line, (0.2, 0.06, 0.06), 0.9, blur=0.4)

    # Glasses on top of everything in the face.
    if person.glasses:
        lens, fr = p.mask(), p.mask()
        for sx in (-1, 1):
            ex = sx * person.eye_dx + yaw
            if person.glasses_round:
                p.ellipse(lens, (ex, ey + 1), (ew + 3.5, ew * 0.75 + 2))
                p.ellipse(fr, (ex, ey + 1), (ew + 3.5, ew * 0.75 + 2), 0, 0, 360, 1.2)
            else:
                corners = [(ex - ew - 3.5, ey - eh - 3.5), (ex + ew + 3.5, ey - eh - 3.5),
                           (ex + ew + 3, ey + eh + 4.5), (ex - ew - 3, ey + eh + 4.5)]
                p.poly(lens, corners)
                p.line(fr, corners, 1.2, closed=True)
            p.line(fr, [(ex + sx * (ew + 3.5), ey - 2), (sx * a * 0.98, ey - 4)], 1.0)
        # a thin bridge set high, so the lit nose bridge between the lenses stays visible
        p.line(fr, [(yaw - person.eye_dx + ew + 3, ey - 3), (yaw, ey - 5), (yaw + person.eye_dx - ew - 3, ey - 3)], 0.9)
        p.paint(lens, (0.25, 0.3, 0.35), 0.15)  # tinted lenses darken the eye band a little
        p.paint(fr, (0.06, 0.05, 0.05), 0.9)
    if person.earrings:
        er = p.mask()
        for sx in (-1, 1):
            p.ellipse(er, (sx * a * 1.0, ey + 18), (2.2, 2.2))
        p.paint(er, (0.9, 0.8, 0.35))

    # Light: a directional gradient over the whole scene, then exposure.
    lx, ly = np.cos(shot.light_dir), np.sin(shot.light_dir)
    xs = (np.arange(w, dtype=np.float32) - w / 2) / w
    ys = (np.arange(h, dtype=np.float32) - h / 2) / h
    p.shade((1.0 + shot.light_strength * (lx * xs[None, :] + ly * ys[:, None])) * shot.brightness)

    img = cv2.GaussianBlur(p.img, (0, 0), shot.blur_sigma * s)
    img += rng.normal(0, shot.noise_sigma, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV fails only without a JPEG codec
        raise RuntimeError("OpenCV could not encode a JPEG (built without libjpeg?)")
    return buf.tobytes()


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------

_SCREEN_ATTEMPTS = 25


def screening_detector(cfg: SynthConfig):
    """The detector registry's ``haar`` at the preprocess stage's settings (scan step 1.1,
    5 neighbours, 24 px: ``DetectorConfig("haar")``), scanning photos of ``cfg.image_size`` whole."""
    from facerec.detect import DetectorConfig

    return DetectorConfig("haar", detect_max_side=max(640, *cfg.image_size)).build()


def count_faces(detector, rgb: np.ndarray) -> int:
    """Faces the first pass of a ``haar`` detector (:func:`screening_detector`) finds in ``rgb``."""
    return int(detector.detect_many([rgb])[0].info["faces_pass1"])


def _passport_shot(person: Identity) -> Shot:
    """A neutral, frontal, evenly lit photo on a plain grey that contrasts with the skin: the
    screening view of an identity."""
    skin = _luma(person.skin)
    grey = skin - 0.35 if skin > 0.45 else skin + 0.35
    return Shot(
        angle=0.0, scale=1.0, dx=0.0, dy=0.0, yaw=0.0, smile=False, mouth_open=False, light_dir=0.0,
        light_strength=0.0, brightness=1.0, background=(grey, grey, grey), background_texture=0.05,
        clothes=(0.3, 0.3, 0.35), blur_sigma=0.8, blurry=False, noise_sigma=0.01, jpeg_quality=95,
    )


def draw_identity(cfg: SynthConfig, index: int, label: int, detector) -> tuple[Identity, int]:
    """Sample person ``index`` and redraw them (fresh random stream) while the cascade
    (``detector``: :func:`screening_detector`) misses their neutral passport photo: a handful of
    trait combinations read as no face to Haar, and a person the cropper can never find would
    only be dropped downstream. Returns the person and how many draws were rejected."""
    person = None
    for attempt in range(_SCREEN_ATTEMPTS):
        person = sample_identity(np.random.default_rng([cfg.seed, index, 0, attempt]), label)
        rng = np.random.default_rng([cfg.seed, index, 0, attempt, 1])
        if count_faces(detector, render(person, _passport_shot(person), cfg.image_size, rng)) == 1:
            return person, attempt
    return person, _SCREEN_ATTEMPTS  # pragma: no cover - never seen; keep the last draw


def image_name(number: int) -> str:
    return f"{number:06d}.jpg"


def default_synthetic_dir() -> Path:
    """Where ``ensure_synthetic`` keeps its dataset: ``$FACEREC_CACHE`` (or ``~/.cache/facerec``)
    ``/synthetic-v1``."""
    from facerec.io import cache_root

    return cache_root() / "synthetic-v1"


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: str | os.PathLike, cfg: SynthConfig) -> bool:
    """True when ``root`` holds a finished dataset of this generator version and ``cfg``."""
    root = Path(root)
    marker = _read_marker(root)
    if not marker or not marker.get("complete") or marker.get("version") != SYNTH_VERSION:
        return False
    if marker.get("params") != cfg.as_dict():
        return False
    if not all((root / f).is_file() for f in (IDENTITY_FILE, ATTR_FILE, PARTITION_FILE)):
        return False
    n = cfg.n_identities * cfg.images_per_identity
    return all((root / IMAGE_DIR / image_name(i)).is_file() for i in range(1, n + 1))


def _split_sizes(n: int) -> tuple[int, int, int]:
    """Identities per official partition (train, val, test), ~80/10/10 with at least one test
    identity and, from three identities up, one validation identity."""
    n_test = max(1, int(round(0.1 * n)))
    n_val = max(1, int(round(0.1 * n))) if n - n_test >= 2 else 0
    return n - n_val - n_test, n_val, n_test


def _check_root(root: Path) -> None:
    """Refuse to write into a folder that holds something else (a real CelebA copy, say):
    only an empty folder or one a previous ``generate_synthetic`` marked is ours to fill."""
    if root.exists() and not root.is_dir():
        raise ConfigError("root", str(root), "a folder path (it is a file)")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER_FILE).is_file():
        raise ConfigError(
            "root", str(root),
            f"an empty folder or one written by `facerec data synth` (it has files but no {MARKER_FILE}); "
            "pick another folder so existing data is not overwritten",
        )


def _attr_text(rows: list[tuple[str, dict[str, int]]]) -> str:
    # Mirrors the official file byte for byte: CRLF, a trailing space after the names,
    # each value right-aligned in two columns.
    lines = [str(len(rows)), " ".join(ATTRIBUTE_NAMES) + " "]
    for name, attrs in rows:
        lines.append(name + "".join(f" {attrs[a]:2d}" for a in ATTRIBUTE_NAMES))
    return "\r\n".join(lines) + "\r\n"


def generate_synthetic(
    root: str | os.PathLike,
    n_identities: int = 60,
    images_per_identity: int = 15,
    seed: int = 0,
    image_size: tuple[int, int] = (178, 218),
    progress: bool = True,
) -> Path:
    """Write a synthetic CelebA-layout dataset to ``root`` and return ``root``.

    Deterministic for a ``seed`` (same OpenCV build). ``image_size`` is (width, height).
    Identities are assigned whole to the official partitions 0/1/2 (~80/10/10), images
    numbered train first, then val, then test, as in CelebA's ``list_eval_partition.txt``
    (Liu et al., ICCV 2015); identity numbers are spread over CelebA's 1..10177 range.
    Re-running with the same parameters on a complete folder returns at once; an interrupted
    run resumes, keeping the images already written (every file is written atomically).
    """
    cfg = SynthConfig(n_identities, images_per_identity, seed, image_size)
    root = Path(root).expanduser()
    if is_complete(root, cfg):
        logger.info("synth: %s is up to date (%s)", root, cfg.as_dict())
        return root
    _check_root(root)
    # Several processes may ask for the shared default folder at once (parallel tests, workers):
    # one generates, the others wait and then find it complete.
    with _folder_lock(root):
        if is_complete(root, cfg):
            return root
        return _generate(root, cfg, progress)


@contextmanager
def _folder_lock(root: Path) -> Iterator[None]:
    from filelock import FileLock

    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(root.parent / f".{root.name}.lock"):
        yield


def _generate(root: Path, cfg: SynthConfig, progress: bool) -> Path:
    from facerec.progress import Progress

    started = time.perf_counter()
    previous = _read_marker(root)
    resume = bool(previous and previous.get("version") == SYNTH_VERSION and previous.get("params") == cfg.as_dict())
    marker = {"version": SYNTH_VERSION, "params": cfg.as_dict(), "complete": False, "opencv": cv2.__version__}
    atomic_write_json(root / MARKER_FILE, marker)

    plan = np.random.default_rng([cfg.seed, 1 << 20])
    n = cfg.n_identities
    pool = max(10177, 2 * n)  # CelebA numbers its people 1..10177
    labels = np.sort(plan.choice(np.arange(1, pool + 1), size=n, replace=False))
    order = plan.permutation(n)
    n_train, n_val, n_test = _split_sizes(n)
    partition = np.empty(n, np.int8)
    partition[order[:n_train]] = 0
    partition[order[n_train:n_train + n_val]] = 1
    partition[order[n_train + n_val:]] = 2

    detector = screening_detector(cfg)
    people, rejected = [], 0
    for i in range(n):
        person, r = draw_identity(cfg, i, int(labels[i]), detector)
        people.append(person)
        rejected += r

    # Images of one partition are contiguous and shuffled within it, as in the official file.
    images: list[tuple[int, int]] = []
    for part in (0, 1, 2):
        block = [(i, j) for i in np.flatnonzero(partition == part) for j in range(cfg.images_per_identity)]
        images += [block[t] for t in plan.permutation(len(block))]

    img_dir = root / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    id_lines, part_lines, attr_rows = [], [], []
    bar = Progress(len(images), "synth", "img", enabled=progress)
    for number, (i, j) in enumerate(images, start=1):
        person = people[i]
        name = image_name(number)
        rng = np.random.default_rng([cfg.seed, i, 1 + j])
        shot = sample_shot(rng, person)
        path = img_dir / name
        if not (resume and path.is_file()):
            atomic_write_bytes(path, encode_jpeg(render(person, shot, cfg.image_size, rng), shot.jpeg_quality))
        id_lines.append(f"{name} {person.label}\n")
        part_lines.append(f"{name} {int(partition[i])}\n")
        attr_rows.append((name, shot_attributes(person, shot)))
        bar.update()
    bar.close()
    # A previous, larger dataset in this (marked) folder leaves images nobody lists: remove them.
    wanted = {image_name(k) for k in range(1, len(images) + 1)}
    for stale in img_dir.glob("*.jpg"):
        if stale.name not in wanted:
            stale.unlink()

    atomic_write_text(root / IDENTITY_FILE, "".join(id_lines))
    atomic_write_text(root / PARTITION_FILE, "".join(part_lines))
    atomic_write_text(root / ATTR_FILE, _attr_text(attr_rows))
    seconds = time.perf_counter() - started
    marker.update(
        complete=True,
        images=len(images),
        identities={"train": n_train, "val": n_val, "test": n_test},
        identities_redrawn_by_haar_screen=rejected,
        seconds=round(seconds, 2),
    )
    atomic_write_json(root / MARKER_FILE, marker)
    summary = (
        f"synth: {len(images)} images of {n} identities ({n_train}/{n_val}/{n_test} train/val/test), "
        f"{cfg.image_size[0]}x{cfg.image_size[1]}, seed {cfg.seed} -> {root} in {seconds:.1f}s"
    )
    logger.info(summary)
    if progress:
        print(summary, file=sys.stderr)
    return root


def ensure_synthetic(root: str | os.PathLike | None = None, **params) -> Path:
    """The synthetic dataset at ``root`` (default :func:`default_synthetic_dir`), generated
    with ``params`` (see :func:`generate_synthetic`) unless already there."""
    return generate_synthetic(default_synthetic_dir() if root is None else root, **params)
