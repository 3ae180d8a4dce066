"""Face detectors on real photos, one CPU thread: ms per photo and the photos in which a face is found.

    python benchmarks/bench_detect.py                   # first 300 of ../shared/data/celeba-sample
    python benchmarks/bench_detect.py --limit 100 --batch 32

Rows: ``haar`` (the study's two-pass cascade, facerec.detect), ``mtcnn`` (facerec.detect.mtcnn,
MTCNN of Zhang et al., IEEE SPL 2016, on ONNX Runtime) at several ``min_face`` x ``scale_step``
settings one photo per call and at the default settings ``--batch`` photos per call,
facenet-pytorch's MTCNN (torch) one photo per call at its defaults (min_face_size 20, factor 0.709,
thresholds 0.6/0.7/0.7), and dlib's HOG detector (``get_frontal_face_detector()(rgb, 1)``) when
``import dlib`` works. Photos are decoded beforehand; only detection is timed, after a warm-up.

``found`` counts photos with at least one box the detector returns; ``found_gated`` those with at
least one box passing a face gate: for facerec's detectors their own (``mtcnn`` rows: score >=
``min_confidence`` and shorter side >= the row's ``min_face``; ``haar``: 24 px, no score), for
facenet-pytorch the ``mtcnn`` defaults' gate applied to its boxes, for dlib the size part of it
only (its scores are not probabilities).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy/torch/onnxruntime start their thread pools
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._common import SHARED_DATA, write_table  # noqa: E402


def _timed(fn, photos, batch: int) -> tuple[float, list]:
    fn(photos[: min(3, len(photos))])  # sessions, caches
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(photos), batch):
        out.extend(fn(photos[i:i + batch]))
    return 1000 * (time.perf_counter() - t0) / len(photos), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"))
    ap.add_argument("--limit", type=int, default=300, help="first N images (sorted names)")
    ap.add_argument("--batch", type=int, default=16, help="photos per detect_many call for the batched mtcnn row")
    ap.add_argument("--min-faces", default="20,32,40", help="mtcnn min_face settings")
    ap.add_argument("--scale-steps", default="1.41,1.6,2.0", help="mtcnn scale_step settings")
    ap.add_argument("--no-reference", action="store_true", help="skip facenet-pytorch and dlib")
    ap.add_argument("--out", default="results/bench_detect")
    args = ap.parse_args(argv)

    import cv2

    from facerec.data.celeba import find_image_dir
    from facerec.data.images import read_image
    from facerec.detect import DetectorConfig
    from facerec.detect.mtcnn import MTCNN, ensure_mtcnn_onnx

    cv2.setNumThreads(1)
    data = Path(args.data)
    try:
        img_dir = find_image_dir(data)
    except Exception as e:  # noqa: BLE001
        print(f"error: {data}: {e} (set --data or FACEREC_SHARED)", file=sys.stderr)
        return 2
    paths = sorted(img_dir.glob("*.jpg"))[: args.limit]
    if not paths:
        print(f"error: no .jpg photos in {img_dir}", file=sys.stderr)
        return 2
    photos = [read_image(p) for p in paths]
    sides = [max(p.shape[:2]) for p in photos]
    ensure_mtcnn_onnx()  # the export (torch) is not timed
    gate = DetectorConfig("mtcnn").resolved()

    rows = []

    def add(detector, settings, batch, ms, n_found, n_gated):
        rows.append({"detector": detector, "settings": settings, "batch": batch, "ms_per_photo": ms,
                     "found": n_found / len(photos), "found_gated": n_gated / len(photos)})
        print(f"  {detector:<16} {settings:<34} batch {batch:>3}: {ms:7.2f} ms/photo, found {n_found}, gated {n_gated}",
              flush=True)

    haar = DetectorConfig("haar").build()
    ms, faces = _timed(haar.detect_many, photos, 1)
    add("haar", "scale 1.1, 5 neighbours, 24 px", 1, ms, sum(len(f) > 0 for f in faces),
        sum(len(haar.gate(f)) > 0 for f in faces))

    for mf in (int(v) for v in args.min_faces.split(",")):
        for step in (float(v) for v in args.scale_steps.split(",")):
            det = MTCNN(DetectorConfig("mtcnn", min_face=mf, scale_step=step), threads=1)
            ms, faces = _timed(det.detect_many, photos, 1)
            add("mtcnn (ours)", f"min_face {mf}, scale_step {step:g}", 1, ms, sum(len(f) > 0 for f in faces),
                sum(len(det.gate(f)) > 0 for f in faces))
    det = MTCNN(DetectorConfig("mtcnn"), threads=1)
    for batch in (1, args.batch):
        ms, faces = _timed(det.detect_many, photos, batch)
        add("mtcnn (ours)", f"defaults (min_face {gate.min_face}, scale_step {gate.scale_step:g})", batch, ms,
            sum(len(f) > 0 for f in faces), sum(len(det.gate(f)) > 0 for f in faces))

    notes = [f"{len(photos)} photos of {data} (longer side {min(sides)}-{max(sides)} px, median "
             f"{int(np.median(sides))}), decoded beforehand; one thread everywhere (OMP_NUM_THREADS=1, "
             "cv2.setNumThreads(1), ORT intra-op 1, torch.set_num_threads(1)).",
             f"found_gated: at least one box through the row's face gate (mtcnn: score >= {gate.min_confidence:g}, "
             f"shorter side >= the row's min_face; haar: 24 px; facenet-pytorch: the mtcnn defaults' gate; "
             f"dlib: shorter side >= {gate.min_face} px).",
             "mtcnn (ours) finds faces down to 0.8 x min_face so that boxes just under the gate are counted "
             "as too_small; facenet-pytorch's row scans down to its min_face_size of 20."]
    if not args.no_reference:
        try:
            import torch
            from facenet_pytorch import MTCNN as FacenetMTCNN
        except ImportError as exc:
            notes.append(f"facenet-pytorch skipped: {exc}")
        else:
            torch.set_num_threads(1)
            ref = FacenetMTCNN(keep_all=True, device="cpu")

            def facenet(batch):
                out = []
                for rgb in batch:
                    boxes, probs = ref.detect(rgb)
                    boxes = np.zeros((0, 4)) if boxes is None else boxes
                    probs = np.asarray(probs if len(boxes) else [], dtype=float)
                    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
                    out.append((len(boxes), int(((probs >= gate.min_confidence) & (side >= gate.min_face)).sum())))
                return out

            ms, res = _timed(facenet, photos, 1)
            add("facenet-pytorch", "defaults (20 px, factor 0.709, 0.6/0.7/0.7)", 1, ms,
                sum(n > 0 for n, _ in res), sum(g > 0 for _, g in res))
        try:
            import dlib
        except ImportError as exc:
            notes.append(f"dlib skipped: {exc} (pip install dlib-bin)")
        else:
            hog = dlib.get_frontal_face_detector()

            def dlib_hog(batch):
                out = []
                for rgb in batch:
                    rects = hog(rgb, 1)
                    sides = [min(r.width(), r.height()) for r in rects]
                    out.append((len(rects), sum(s >= gate.min_face for s in sides)))
                return out

            ms, res = _timed(dlib_hog, photos, 1)
            add("dlib HOG", "get_frontal_face_detector, upsample 1", 1, ms,
                sum(n > 0 for n, _ in res), sum(g > 0 for _, g in res))

    df = pd.DataFrame(rows)
    write_table(df, args.out, "bench_detect", "Face detection: ms per photo and photos with a face, one thread", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
