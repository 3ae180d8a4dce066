"""Face alignment: the numpy ports of dlib's 5-point landmarker and ``get_face_chip``
(``facerec.dlibport``) against dlib itself, on real photos.

    python benchmarks/bench_align.py                    # first 400 of ../shared/data/celeba-sample
    python benchmarks/bench_align.py --limit 100 --batch 32

Faces are found with the project's Haar detector (``HaarDetector.detect``: two passes, every
box of the pass it keeps) and turned into dlib rectangles with ``rect_from_xywh``. For each
face: dlib's landmarks vs the port's (a face counts as identical when all 5 points are), and
``dlib.get_face_chip`` vs ``extract_face_chip`` on dlib's landmarks (bit-identical chips).
Speed: dlib's landmarker per face, the port's per face in batches of ``--batch`` faces and
one face at a time, and chip extraction per face for both. Needs dlib (the ``dlib-bin`` wheel).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._common import SHARED_DATA, write_table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"))
    ap.add_argument("--limit", type=int, default=400, help="first N images (sorted names)")
    ap.add_argument("--batch", type=int, default=64, help="faces per predict_many call")
    ap.add_argument("--large", type=int, default=50,
                    help="also compare the first N faces on their photo upscaled 3x (dlib's pyramid path); 0: skip")
    ap.add_argument("--out", default="results/bench_align")
    args = ap.parse_args(argv)
    try:
        import dlib
    except ImportError:
        print("error: dlib is not importable (pip install dlib-bin): it is the reference", file=sys.stderr)
        return 2
    from facerec.data.celeba import find_image_dir
    from facerec.data.haar import HaarDetector
    from facerec.data.images import read_image
    from facerec.dlibport import files
    from facerec.dlibport.chip import _area, _rect_down, extract_face_chip, face_chip_details
    from facerec.dlibport.shape_predictor import ShapePredictor, rect_from_xywh

    data = Path(args.data)
    try:
        img_dir = find_image_dir(data)
    except Exception as e:  # noqa: BLE001
        print(f"error: {data}: {e} (set --data or FACEREC_SHARED)", file=sys.stderr)
        return 2
    paths = sorted(img_dir.glob("*.jpg"))[: args.limit]
    det = HaarDetector()
    images, rects = [], []
    for p in paths:
        rgb = read_image(p)
        for box in det.detect(rgb).boxes:
            images.append(rgb)
            rects.append(rect_from_xywh(*(int(v) for v in box)))
    n = len(rects)
    if n == 0:
        print("error: no faces found", file=sys.stderr)
        return 1

    model = files.locate(files.SHAPE_5)
    dsp = dlib.shape_predictor(str(model))
    t0 = time.perf_counter()
    port = ShapePredictor.load()
    load_s = time.perf_counter() - t0

    # landmarks: dlib
    t0 = time.perf_counter()
    dets = [dsp(img, dlib.rectangle(*r)) for img, r in zip(images, rects)]
    dlib_lm_s = time.perf_counter() - t0
    ref = np.array([[[q.x, q.y] for q in d.parts()] for d in dets], np.float32)
    # landmarks: the port, batched and one by one
    t0 = time.perf_counter()
    got = np.concatenate([port.predict_many(images[i:i + args.batch], rects[i:i + args.batch])
                          for i in range(0, n, args.batch)])
    port_batch_s = time.perf_counter() - t0
    k1 = min(n, 100)
    t0 = time.perf_counter()
    for img, r in zip(images[:k1], rects[:k1]):
        port.predict(img, r)
    port_single_s = (time.perf_counter() - t0) / k1 * n
    lm_diff = np.abs(got - ref).max(axis=(1, 2))

    # chips, both from dlib's landmarks (so chip exactness is measured on its own)
    t0 = time.perf_counter()
    ref_chips = [dlib.get_face_chip(img, d, 150, 0.25) for img, d in zip(images, dets)]
    dlib_chip_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    port_chips = [extract_face_chip(img, pts, 150, 0.25) for img, pts in zip(images, ref)]
    port_chip_s = time.perf_counter() - t0
    chip_diff = np.array([np.abs(a.astype(np.int16) - b).max() for a, b in zip(ref_chips, port_chips)])
    # dlib's condition for sampling from its image pyramid (extract_image_chips)
    pyramid = np.array([_area(_rect_down(face_chip_details(pts).rect)) > 150 * 150 for pts in ref])

    ms = lambda s: round(1000 * s / n, 3)  # noqa: E731
    lm_same = float((lm_diff == 0).mean())
    chip_same = float((chip_diff == 0).mean())
    rows = [
        {"stage": "landmarks", "impl": "dlib", "faces": n, "ms_per_face": ms(dlib_lm_s), "identical_frac": None, "max_abs_diff": None},
        {"stage": "landmarks", "impl": f"port, batch {args.batch}", "faces": n, "ms_per_face": ms(port_batch_s),
         "identical_frac": round(lm_same, 4), "max_abs_diff": float(lm_diff.max())},
        {"stage": "landmarks", "impl": "port, 1 face per call", "faces": k1, "ms_per_face": ms(port_single_s),
         "identical_frac": None, "max_abs_diff": None},
        {"stage": "chip 150/0.25", "impl": "dlib", "faces": n, "ms_per_face": ms(dlib_chip_s), "identical_frac": None, "max_abs_diff": None},
        {"stage": "chip 150/0.25", "impl": "port", "faces": n, "ms_per_face": ms(port_chip_s),
         "identical_frac": round(chip_same, 4), "max_abs_diff": float(chip_diff.max())},
    ]
    if args.large:
        import cv2

        big_lm, big_chip, big_pyr = [], [], []
        seen: dict[int, np.ndarray] = {}
        for img, r in list(zip(images, rects))[: args.large]:
            big = seen.setdefault(id(img), cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR))
            br = (3 * r[0], 3 * r[1], 3 * r[2] + 2, 3 * r[3] + 2)
            d = dsp(big, dlib.rectangle(*br))
            pts = np.array([[q.x, q.y] for q in d.parts()], np.float32)
            big_lm.append(np.abs(port.predict(big, br) - pts).max())
            big_chip.append(np.abs(dlib.get_face_chip(big, d, 150, 0.25).astype(np.int16) - extract_face_chip(big, pts)).max())
            big_pyr.append(_area(_rect_down(face_chip_details(pts).rect)) > 150 * 150)
        big_lm, big_chip = np.array(big_lm), np.array(big_chip)
        rows += [
            {"stage": "landmarks, photo x3", "impl": "port", "faces": len(big_lm), "ms_per_face": None,
             "identical_frac": round(float((big_lm == 0).mean()), 4), "max_abs_diff": float(big_lm.max())},
            {"stage": "chip, photo x3", "impl": "port", "faces": len(big_chip), "ms_per_face": None,
             "identical_frac": round(float((big_chip == 0).mean()), 4), "max_abs_diff": float(big_chip.max())},
        ]
        chip_same = min(chip_same, float((big_chip == 0).mean()))
    df = pd.DataFrame(rows)
    notes = [
        f"data: {img_dir} (first {len(paths)} images, {n} Haar faces; {int(pyramid.sum())} large enough for dlib's pyramid path)",
        f"landmarks identical on {100 * lm_same:.2f}% of faces (target >= 99%): {'MET' if lm_same >= 0.99 else 'NOT MET'}",
        f"chips bit-identical on {100 * chip_same:.2f}% of faces",
        f"port model load: {load_s:.2f} s (parsed .dat, or the cached .npz); dlib {dlib.__version__}",
        *([f"photo x3: first {args.large} faces on their photo upscaled 3x (cv2 INTER_LINEAR), "
           f"{int(np.sum(big_pyr))} of them on dlib's pyramid path"] if args.large else []),
        "timings: wall clock on a shared machine, single-threaded numpy; the 1-face row is timed on the first "
        f"{k1} faces",
    ]
    write_table(df, args.out, "bench_align", "Face alignment: numpy port vs dlib", notes)
    return 0 if lm_same >= 0.99 and chip_same == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
