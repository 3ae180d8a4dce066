"""Drawing one synthetic photo of an :class:`~facerec.data.synth.identity.Identity` in a
:class:`~facerec.data.synth.identity.Shot` with numpy + OpenCV, tuned so that OpenCV's
frontal-face Haar cascade finds the face (shaded eye sockets, a lit nose bridge, light cheeks, a
background whose brightness differs from the skin's: see the package's docstring).
"""

from __future__ import annotations

import cv2
import numpy as np

from facerec.data.synth.identity import HAIR_COLOURS, Identity, Shot

# Design frame: every length below is in pixels of a 178 x 218 image (CelebA's aligned size);
# other sizes scale the whole drawing.
_DESIGN_W, _DESIGN_H = 178.0, 218.0

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
    hair = np.asarray(HAIR_COLOURS[person.hair], np.float32)
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
