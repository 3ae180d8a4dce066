"""Fit each detector's box map into dlib's convention, and report landmark agreement with dlib's pipeline.

    python benchmarks/fit_box_maps.py                     # every celeba-sample photo, haar and mtcnn
    python benchmarks/fit_box_maps.py --limit 1500 --detectors mtcnn

dlib's 5-point shape predictor (Kazemi & Sullivan, CVPR 2014) was trained on the boxes of dlib's own
HOG detector; started from another detector's box it lands elsewhere. On every photo, dlib's HOG
detector (one upsample, as ``face_recognition`` runs it) and each facerec detector (its defaults and
gate) look for faces; a detector box is paired with the HOG box whose centre is nearest, when that
centre lies within a third of the detector box's width. The map (``facerec.detect.base.BoxMap``:
centre shift as a fraction of the box's width/height, width and height scale) is the median of the
paired ratios: robust to the odd wrong pairing. The constants printed go into the detector's
``box_maps``.

Landmark agreement: on the same pairs, dlib's own 5 landmarks (dlib's ``shape_predictor`` on the HOG
box, the input of dlib's ``get_face_chip``) against the landmarks facerec computes from the detector
box, raw and mapped: the mean distance of the 5 points over the inter-ocular distance (the mean of
the two eyes' corner points), and the share of faces within 0.05 and 0.10 of it. Half of the pairs
(every other photo) fit the map, the other half score it, so the agreement figures are held out.
Needs ``dlib`` (the ``dlib-bin`` dev extra): a benchmark reference, never a run-time dependency.
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


def hog_boxes(paths: list[Path]) -> list[np.ndarray]:
    import dlib

    from facerec.data.images import read_image

    det = dlib.get_frontal_face_detector()
    out = []
    for p in paths:
        rects = det(read_image(p), 1)
        out.append(np.array([[r.left(), r.top(), r.width(), r.height()] for r in rects], dtype=np.float64).reshape(-1, 4))
    return out


def dlib_landmarks(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    import dlib

    from facerec.dlibport.files import SHAPE_5, locate

    global _SP
    try:
        sp = _SP
    except NameError:
        sp = _SP = dlib.shape_predictor(str(locate(SHAPE_5)))
    x, y, w, h = (int(round(v)) for v in box)
    shape = sp(rgb, dlib.rectangle(x, y, x + w - 1, y + h - 1))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)


def our_landmarks(images: list[np.ndarray], boxes: np.ndarray) -> np.ndarray:
    from facerec.data.inputs import shape_predictor
    from facerec.dlibport.shape_predictor import rect_from_xywh

    rects = [rect_from_xywh(*(int(round(v)) for v in b)) for b in boxes]
    return np.asarray(shape_predictor().predict_many(images, rects), dtype=np.float64).reshape(-1, 5, 2)


def pair(det_boxes: np.ndarray, ref_boxes: np.ndarray) -> list[tuple[int, int]]:
    """(detector box, HOG box) index pairs: each detector box with the HOG box whose centre is
    nearest, when within a third of the detector box's width (each HOG box used once)."""
    if len(det_boxes) == 0 or len(ref_boxes) == 0:
        return []
    dc = det_boxes[:, :2] + det_boxes[:, 2:] / 2
    rc = ref_boxes[:, :2] + ref_boxes[:, 2:] / 2
    d = np.linalg.norm(dc[:, None] - rc[None], axis=2)
    out, used = [], set()
    for i in np.argsort(d.min(axis=1)):
        j = int(np.argmin(d[i]))
        if j not in used and d[i, j] <= det_boxes[i, 2] / 3:
            out.append((int(i), j))
            used.add(j)
    return out


def fit(det: np.ndarray, ref: np.ndarray):
    from facerec.detect import BoxMap

    w, h = det[:, 2], det[:, 3]
    dcx, dcy = det[:, 0] + w / 2, det[:, 1] + h / 2
    rcx, rcy = ref[:, 0] + ref[:, 2] / 2, ref[:, 1] + ref[:, 3] / 2
    return BoxMap(dx=float(np.median((rcx - dcx) / w)), dy=float(np.median((rcy - dcy) / h)),
                  sw=float(np.median(ref[:, 2] / w)), sh=float(np.median(ref[:, 3] / h)))


def agreement(ours: np.ndarray, ref: np.ndarray) -> dict:
    # dlib's 5 points: 0-1 one eye's corners, 2-3 the other's, 4 the base of the nose.
    iod = np.linalg.norm(ref[:, 0:2].mean(axis=1) - ref[:, 2:4].mean(axis=1), axis=1)
    err = np.linalg.norm(ours - ref, axis=2).mean(axis=1) / np.maximum(iod, 1e-9)
    return {"mean_err_iod": float(err.mean()), "median_err_iod": float(np.median(err)),
            "within_0.05": float((err <= 0.05).mean()), "within_0.10": float((err <= 0.10).mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"))
    ap.add_argument("--detectors", default="haar,mtcnn")
    ap.add_argument("--limit", type=int, default=None, help="first N photos (default: all)")
    ap.add_argument("--out", default="results/fit_box_maps")
    args = ap.parse_args(argv)

    from facerec.data.celeba import find_image_dir, load_celeba
    from facerec.data.images import read_image
    from facerec.detect import DLIB, DetectorConfig

    data = Path(args.data)
    ids = load_celeba(data).drop_duplicates("image_id")["image_id"].tolist()[: args.limit]
    paths = [find_image_dir(data) / i for i in ids]
    t0 = time.perf_counter()
    ref = hog_boxes(paths)
    print(f"dlib HOG: {sum(map(len, ref))} boxes in {len(paths)} photos, {time.perf_counter() - t0:.0f} s", flush=True)
    rows, notes = [], []
    for name in [d for d in args.detectors.split(",") if d]:
        detector = DetectorConfig(name).build()
        pairs = []  # (photo index, detector box, HOG box)
        for k in range(0, len(paths), 32):
            images = [read_image(p) for p in paths[k:k + 32]]
            for j, found in enumerate(detector.find_many(images)):
                for a, b in pair(found.boxes, ref[k + j]):
                    pairs.append((k + j, found.boxes[a], ref[k + j][b]))
        idx = np.array([p[0] for p in pairs])
        det_b = np.array([p[1] for p in pairs])
        ref_b = np.array([p[2] for p in pairs])
        fit_on, score_on = idx % 2 == 0, idx % 2 == 1
        m = fit(det_b[fit_on], ref_b[fit_on])
        m_all = fit(det_b, ref_b)
        notes.append(f"{name}: BoxMap(dx={m_all.dx:.4f}, dy={m_all.dy:.4f}, sw={m_all.sw:.4f}, sh={m_all.sh:.4f}) "
                     f"fitted on all {len(pairs)} pairs (the half-split fit: dx={m.dx:.4f}, dy={m.dy:.4f}, "
                     f"sw={m.sw:.4f}, sh={m.sh:.4f}); in use now: {detector.box_maps.get(DLIB)}")
        sel = np.flatnonzero(score_on)
        images = {i: read_image(paths[i]) for i in sorted(set(idx[sel]))}
        imgs = [images[i] for i in idx[sel]]
        want = np.stack([dlib_landmarks(images[i], b) for i, b in zip(idx[sel], ref_b[sel])])
        for label, boxes in (("dlib HOG box (reference)", ref_b[sel]), (f"{name} box, raw", det_b[sel]),
                             (f"{name} box, mapped (fit on the other half)", m(det_b[sel]))):
            got = our_landmarks(imgs, boxes)
            rows.append({"detector": name, "landmarks from": label, "faces": len(sel), **agreement(got, want)})
    df = pd.DataFrame(rows)
    write_table(df, args.out, "fit_box_maps", f"Box maps into dlib's convention and landmark agreement on {data.name}", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
