"""Who is in the synthetic photos and how each photo of them differs: an :class:`Identity`
(every trait that stays the same across one person's photos), a :class:`Shot` (the nuisance of
one photo) and the CelebA attributes they show. Identity ranges are several times wider than
within-identity jitter so a small CNN can tell people apart, as in the CelebA identity protocol
of Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facerec.data.schema import ATTRIBUTE_NAMES

HAIR_COLOURS = {  # RGB 0..1; the name is the CelebA attribute it sets
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
    hair: str              # key of HAIR_COLOURS
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


def luma(rgb) -> float:
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
    skin = luma(person.skin)
    gap = luma(background) - skin
    if abs(gap) < _MIN_BG_CONTRAST:
        go_up = (gap >= 0 and skin + _MIN_BG_CONTRAST <= 0.9) or skin - _MIN_BG_CONTRAST < 0.08
        target = skin + _MIN_BG_CONTRAST if go_up else skin - _MIN_BG_CONTRAST
        background = np.clip(background + (target - luma(background)), 0.02, 0.98)
        if abs(luma(background) - skin) < _MIN_BG_CONTRAST:  # clipped: fall back to a grey of that level
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


def passport_shot(person: Identity) -> Shot:
    """A neutral, frontal, evenly lit photo on a plain grey that contrasts with the skin: the
    screening view of an identity."""
    skin = luma(person.skin)
    grey = skin - 0.35 if skin > 0.45 else skin + 0.35
    return Shot(
        angle=0.0, scale=1.0, dx=0.0, dy=0.0, yaw=0.0, smile=False, mouth_open=False, light_dir=0.0,
        light_strength=0.0, brightness=1.0, background=(grey, grey, grey), background_texture=0.05,
        clothes=(0.3, 0.3, 0.35), blur_sigma=0.8, blurry=False, noise_sigma=0.01, jpeg_quality=95,
    )
