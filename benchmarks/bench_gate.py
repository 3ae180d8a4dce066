"""Choose the face gate and the several-faces rule by measurement: every celeba-sample photo, every gate.

    python benchmarks/bench_gate.py                      # mtcnn, dlib_resnet
    python benchmarks/bench_gate.py --detector haar

The detector runs once over every listed photo with a permissive gate (``--floor-confidence``,
``--floor-face``); every face it accepts there is aligned (the detector's box mapped into dlib's
convention, 5 landmarks, dlib's chip) and embedded by the model once. Each stricter gate (minimum
confidence x minimum face size) and each several-faces rule (``largest``: keep the largest accepted
face; ``drop``: drop a photo with several) is then a selection among those faces, scored as the real
pipeline scores it: photos kept (an identity left with one photo is dropped, as preprocess does),
precision@1 and MAP@R of leave-one-out retrieval among the kept photos, and the rank-1 rate over
*every listed photo* of identities with at least two photos (a photo whose face is not kept is a miss).

A gate stricter than the floor would also scan a coarser pyramid (MTCNN starts its pyramid at the
gate's minimum face), so its detections can differ slightly from the floor's: this table chooses the
defaults, and ``bench_accuracy.py`` then measures the chosen ones end to end.
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
from benchmarks.bench_accuracy import leave_one_out, rank1_all  # noqa: E402


def detect_and_embed(paths: list[Path], detector_name: str, floor_conf: float, floor_face: int, model: str):
    """Every face of every photo at the floor gate: a frame (photo, score, side, area) and its embeddings."""
    from facerec.data.images import read_image
    from facerec.detect import DetectorConfig
    from facerec.eval.photos import PhotoSteps
    from facerec.models.inference import forward

    steps = PhotoSteps(model, torch_threads=2)
    det = DetectorConfig(detector_name, min_confidence=floor_conf, min_face=floor_face).build()
    rows, embs = [], []
    for k in range(0, len(paths), 32):
        images = [read_image(p) for p in paths[k:k + 32]]
        found = det.find_many(images)
        faces = [(k + j, f.boxes[i], f.scores[i]) for j, f in enumerate(found) for i in range(len(f))]
        if not faces:
            continue
        boxes = det.boxes_in(steps.kind.box_convention, np.array([b for _, b, _ in faces]))
        chips = steps.kind.faces_many([images[i - k] for i, _, _ in faces], list(boxes), steps.size)
        embs.append(forward(steps.model, [steps._make_input(c) for c in chips]))
        for i, b, s in faces:
            rows.append({"photo": i, "score": float(s), "side": float(min(b[2], b[3])), "area": float(b[2] * b[3])})
        print(f"\r{min(k + 32, len(paths))}/{len(paths)} photos, {len(rows)} faces", end="", flush=True)
    print()
    return pd.DataFrame(rows), np.concatenate(embs)


def select(faces: pd.DataFrame, n_photos: int, min_conf: float, min_face: int, rule: str) -> np.ndarray:
    """Per photo the row of its kept face in ``faces``, or -1."""
    ok = faces[(faces["score"] >= min_conf) & (faces["side"] >= min_face)]
    out = np.full(n_photos, -1, dtype=np.int64)
    counts = ok.groupby("photo").size()
    best = ok.sort_values("area", ascending=False, kind="stable").groupby("photo").head(1)
    keep = best if rule == "largest" else best[best["photo"].map(counts) == 1]
    out[keep["photo"].to_numpy()] = keep.index.to_numpy()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"))
    ap.add_argument("--detector", default="mtcnn")
    ap.add_argument("--model", default="dlib_resnet")
    ap.add_argument("--floor-confidence", type=float, default=0.5)
    ap.add_argument("--floor-face", type=int, default=12)
    ap.add_argument("--confidences", default="0.5,0.7,0.8,0.9,0.95,0.98,0.99")
    ap.add_argument("--faces", default="12,16,20,24,32,40")
    ap.add_argument("--out", default="results/bench_gate")
    args = ap.parse_args(argv)

    from facerec.data.celeba import find_image_dir, load_celeba

    data = Path(args.data)
    listing = load_celeba(data).drop_duplicates("image_id").reset_index(drop=True)
    paths = [find_image_dir(data) / i for i in listing["image_id"]]
    labels = listing["identity"].to_numpy()
    cache = Path(args.out) / f"faces-{args.detector}-{args.floor_confidence}-{args.floor_face}.npz"
    t0 = time.perf_counter()
    if cache.is_file():  # the detections and embeddings of an earlier run with the same floor
        z = np.load(cache)
        faces, emb = pd.DataFrame({k: z[k] for k in ("photo", "score", "side", "area")}), z["emb"]
    else:
        faces, emb = detect_and_embed(paths, args.detector, args.floor_confidence, args.floor_face, args.model)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, emb=emb, **{k: faces[k].to_numpy() for k in faces.columns})
    secs = time.perf_counter() - t0
    rows = []
    for conf in [float(c) for c in args.confidences.split(",")]:
        for face in [int(f) for f in args.faces.split(",")]:
            if conf < args.floor_confidence or face < args.floor_face:
                continue
            for rule in ("largest", "drop"):
                pick = select(faces, len(paths), conf, face, rule)
                kept = pick >= 0
                # preprocess drops an identity left with fewer than 2 photos
                n_per = pd.Series(labels[kept]).value_counts()
                kept &= pd.Series(labels).map(n_per).fillna(0).to_numpy() >= 2
                e, lab = emb[pick[kept]], labels[kept]
                p1, mapr, nq = leave_one_out(e, lab)
                rows.append({"min_confidence": conf, "min_face": face, "several_faces": rule, "kept": int(kept.sum()),
                             "kept_pct": 100 * kept.mean(), "p_at_1": p1, "map_at_r": mapr,
                             "rank1_all_listed": rank1_all(labels, p1, nq)})
    df = pd.DataFrame(rows)
    notes = [f"{args.detector} at floor confidence {args.floor_confidence}, floor face {args.floor_face} px: "
             f"{len(faces)} faces in {len(paths)} photos, detected and embedded in {secs:.0f} s"]
    write_table(df, args.out, f"bench_gate_{args.detector}", f"Face gate and several-faces rule on {data.name} "
                f"({args.detector}, {args.model})", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
