"""Inputs and dlib's reference outputs for the shape predictor and face chip ports.

The inputs are synthetic faces (``facerec.data.synth``, seeds 0-5) blurred and quantised to 32
levels so they compress to ~15 KB each (no real photo is stored); they live in
``data/inputs.npz`` with their Haar boxes, so the tests depend on neither the renderer nor
OpenCV. Every case (image, rect) is derived from them by exact integer operations (crops,
``np.repeat`` upscaling, grey conversion). dlib's landmarks and the SHA-256 of its chips for
those cases are in ``data/refs.npz``, with the pixels of the chips in ``FULL_CHIPS`` (to show
where a port differs); the two files stay under 300 KB.

Regenerate both (needs dlib, i.e. the ``dlib-bin`` wheel):

    python tests/dlibport/_refs.py
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
INPUTS = DATA / "inputs.npz"
REFS = DATA / "refs.npz"
SEEDS = range(6)
FULL_CHIPS = ("face0", "face0_x4", "face2_cut_left")


def chip_digest(chip: np.ndarray) -> str:
    import hashlib

    chip = np.ascontiguousarray(chip, dtype=np.uint8)
    return hashlib.sha256(repr(chip.shape).encode() + chip.tobytes()).hexdigest()


def load_inputs() -> tuple[np.ndarray, np.ndarray]:
    with np.load(INPUTS) as z:
        return z["images"], z["boxes"]


def cases() -> list[tuple[str, np.ndarray, tuple[int, int, int, int], bool]]:
    """(name, image, dlib rect (l, t, r, b), chip?) for every reference case."""
    images, boxes = load_inputs()
    out = []
    for i, (img, (x, y, w, h)) in enumerate(zip(images, boxes)):
        x, y, w, h = (int(v) for v in (x, y, w, h))
        rect = (x, y, x + w - 1, y + h - 1)
        out.append((f"face{i}", img, rect, True))
        # jittered boxes: the landmarker from other starting rectangles
        for j, (dx, dy, dw) in enumerate([(-7, 4, 10), (5, -6, -12), (3, 9, 0)]):
            out.append((f"face{i}_jitter{j}", img, (x + dx, y + dy, x + dx + w + dw - 1, y + dy + h + dw - 1), False))
    img, (x, y, w, h) = images[0], boxes[0]
    # large faces: dlib samples the chip from its image pyramid (1 and 2 levels down)
    for k in (4, 8):
        big = np.repeat(np.repeat(img, k, axis=0), k, axis=1)
        out.append((f"face0_x{k}", big, (k * x, k * y, k * (x + w) - 1, k * (y + h) - 1), True))
    # a face cut by the image border: feature pixels outside read 0, the chip is half zeros
    img, (x, y, w, h) = images[2], boxes[2]
    cx = int(x + w // 2)
    cut = np.ascontiguousarray(img[:, cx:])
    out.append(("face2_cut_left", cut, (x - cx, y, x - cx + w - 1, y + h - 1), True))
    img, (x, y, w, h) = images[3], boxes[3]
    cy = int(y + h // 3)
    cut = np.ascontiguousarray(img[cy:, : x + w - 10])
    out.append(("face3_cut_top_right", cut, (x, y - cy, x + w - 1, y - cy + h - 1), True))
    # a grey image (dlib's 8-bit grey overloads)
    img, (x, y, w, h) = images[4], boxes[4]
    grey = (img.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)
    out.append(("face4_grey", grey, (x, y, x + w - 1, y + h - 1), True))
    return out


def make_inputs() -> None:
    import cv2

    from facerec.data import synth
    from facerec.data.haar import HaarDetector

    det = HaarDetector()
    images, boxes = [], []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        person = synth.sample_identity(rng, seed)
        shot = synth.sample_shot(rng, person)
        img = synth.render(person, shot, (178, 218), rng)
        found = det.detect_all(img)
        if len(found) == 0:
            raise RuntimeError(f"seed {seed}: no face found")
        images.append((cv2.GaussianBlur(img, (5, 5), 0) // 8) * 8 + 4)
        boxes.append(found[0])
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(INPUTS, images=np.stack(images).astype(np.uint8), boxes=np.stack(boxes).astype(np.int32))


def make_refs() -> None:
    import dlib

    from facerec.dlibport import files

    sp = dlib.shape_predictor(str(files.locate(files.SHAPE_5)))
    names, landmarks, chip_names, digests, full = [], [], [], [], {}
    for name, img, rect, want_chip in cases():
        det = sp(img, dlib.rectangle(*rect))
        names.append(name)
        landmarks.append([[p.x, p.y] for p in det.parts()])
        if want_chip:
            chip = dlib.get_face_chip(img, det, 150, 0.25)
            chip_names.append(name)
            digests.append(chip_digest(chip))
            if name in FULL_CHIPS:
                full[f"chip_{name}"] = chip
    buf = io.BytesIO()
    np.savez_compressed(buf, names=np.array(names), landmarks=np.array(landmarks, np.float32),
                        chip_names=np.array(chip_names), chip_sha256=np.array(digests),
                        dlib_version=np.array(dlib.__version__), **full)
    REFS.write_bytes(buf.getvalue())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if "--keep-inputs" not in sys.argv:
        make_inputs()
    make_refs()
    print({p.name: p.stat().st_size for p in (INPUTS, REFS)})
