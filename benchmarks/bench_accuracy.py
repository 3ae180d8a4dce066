"""Does the default model recognise faces? Identity retrieval on celeba-sample and LFW verification,
measured end to end through facerec's own stages, beside dlib's own pipeline (the reference that
``face_recognition`` wraps) when dlib is installed.

    python benchmarks/bench_accuracy.py --reference          # mtcnn + haar, both several-faces rules, LFW, dlib
    python benchmarks/bench_accuracy.py --model RUN/<trial>/best --detectors mtcnn --rules largest --no-lfw

Per detector (``mtcnn``, the default; ``haar``, the study's) and rule for photos with several accepted
faces (``largest``; ``drop``, the study's): the photos kept, precision@1 / MAP@R (Musgrave et al.
2020) of leave-one-out retrieval among all kept photos (each photo queries every other; identities
with one kept photo are no query) and on the official test partition alone, and the rank-1 rate
over *every listed photo* of identities with at least two listed photos (a photo whose face was not
kept counts as a miss: what a user who searches with each of their photos sees). LFW: 10-fold-style
accuracy over the folds of pairs.txt, thresholds fit on the other folds (facerec.eval.lfw), per
detector. The dlib reference row: dlib's HOG detector (one upsample), its 5-point landmarks,
``get_face_chip`` and ``compute_face_descriptor`` on the same photos, the largest face of each.

The first detector and rule's kept crops are also written as contact sheets (``contact_sheet.png``:
200 drawn at random; ``contact_sheet_smallest.png``: the 100 with the smallest face boxes, where a
detector's mistakes gather) for a person to check that every one is a face.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._common import SHARED_DATA, write_table  # noqa: E402


def leave_one_out(emb: np.ndarray, labels: np.ndarray) -> tuple[float, float, int]:
    """(precision@1, MAP@R, queries) of leave-one-out L2 retrieval among the embeddings as the model
    gives them: each photo queries all the others; photos whose identity has no other photo are
    no query (``facerec.metrics.retrieval.leave_one_out_metrics``, the validation metric of training)."""
    from facerec.metrics.retrieval import leave_one_out_metrics

    x = np.asarray(emb, dtype=np.float64)
    labels = np.asarray(labels)
    counts = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy()
    m = leave_one_out_metrics(x, labels)
    return m["precision_at_1"], m["map_at_r"], int((counts >= 2).sum())


def rank1_all(listed_labels: np.ndarray, p_at_1: float, queries: int) -> float:
    """The rank-1 rate over every listed photo of identities with at least two listed photos: the
    leave-one-out hits among the kept photos (``p_at_1 * queries``; a kept photo whose identity kept
    no other photo cannot hit) over the number of such listed photos (a photo not kept is a miss)."""
    s = pd.Series(np.asarray(listed_labels))
    eligible = int((s.map(s.value_counts()) >= 2).sum())
    return float(p_at_1) * int(queries) / max(1, eligible)


def contact_sheet(paths: list[Path], out: Path, title: str, cols: int = 20, side: int = 64) -> None:
    """The images of ``paths`` in a grid, ``side`` px each, written as PNG."""
    import cv2

    from facerec.data.images import encode_png, read_image
    from facerec.io import atomic_write_bytes

    rows = -(-len(paths) // cols)
    sheet = np.full((rows * side + 24, cols * side, 3), 255, np.uint8)
    cv2.putText(sheet, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, p in enumerate(paths):
        r, c = divmod(k, cols)
        sheet[24 + r * side:24 + (r + 1) * side, c * side:(c + 1) * side] = cv2.resize(read_image(p), (side, side),
                                                                                      interpolation=cv2.INTER_AREA)
    atomic_write_bytes(out, encode_png(sheet))


def dlib_reference(data: Path, ids: list[str], labels: dict[str, int]) -> dict:
    """dlib's own pipeline on every photo, one process per core (``bench_pipeline.dlib_pool``)."""
    from benchmarks.bench_pipeline import dlib_pool
    from facerec.data.celeba import find_image_dir

    image_dir = find_image_dir(data)
    emb, secs = dlib_pool([str(image_dir / i) for i in ids], max(1, os.cpu_count() or 1))
    ok = ~np.isnan(emb).any(1)
    lab = np.asarray([labels[i] for i in ids])
    p1, mapr, nq = leave_one_out(emb[ok], lab[ok])
    return {"kept": int(ok.sum()), "p_at_1": p1, "map_at_r": mapr, "queries": nq, "seconds": secs,
            "rank1_all": rank1_all(lab, p1, nq), "embeddings": dict(zip(np.asarray(ids)[ok], emb[ok]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"))
    ap.add_argument("--lfw", default=str(SHARED_DATA / "lfw-sample"))
    ap.add_argument("--no-lfw", action="store_true")
    ap.add_argument("--model", default="dlib_resnet", help="checkpoint folder or pretrained name")
    ap.add_argument("--detectors", default="mtcnn,haar", help="face detectors to compare (the first: contact sheets)")
    ap.add_argument("--rules", default="largest,drop", help="several-faces rules to compare")
    ap.add_argument("--reference", action="store_true", help="also run dlib's own pipeline (needs dlib-bin)")
    ap.add_argument("--work", default="results/bench_accuracy/work", help="crops folders (reused when present)")
    ap.add_argument("--out", default="results/bench_accuracy")
    args = ap.parse_args(argv)

    from facerec.data.celeba import load_celeba
    from facerec.data.inputs import kind_of
    from facerec.data.preprocess import PreprocessConfig, preprocess
    from facerec.data.schema import load_crops
    from facerec.gallery.embed import embed_crops
    from facerec.models import read_checkpoint_metadata
    from facerec.models.pretrained import resolve_checkpoint

    ckpt = resolve_checkpoint(args.model)
    meta = read_checkpoint_metadata(ckpt)
    kind = kind_of(meta).name
    data = Path(args.data)
    listing = load_celeba(data)
    listed = len(listing)
    listed_labels = listing.drop_duplicates("image_id")["identity"].to_numpy()
    detectors = [d for d in args.detectors.split(",") if d]
    rows, first = [], None
    for detector in detectors:
        for rule in [r for r in args.rules.split(",") if r]:
            config = PreprocessConfig(input_kind=kind, several_faces=rule, detector=detector)
            crops = Path(args.work) / f"{data.name}-{kind}-{detector}-{rule}-{config.fingerprint()[:8]}"
            summary = preprocess(data, crops, config, progress=False)
            df, _ = load_crops(crops)
            t0 = time.perf_counter()
            emb = embed_crops(df, crops, ckpt, progress=False)
            secs = time.perf_counter() - t0
            p1, mapr, nq = leave_one_out(emb, df["identity"].to_numpy())
            test = (df["partition"] == 2).to_numpy()
            tp1, tmapr, tnq = leave_one_out(emb[test], df["identity"].to_numpy()[test])
            rows.append({"pipeline": f"facerec {args.model}", "detector": config.detector_config().describe(),
                         "several_faces": rule, "listed": listed, "kept": summary["kept"],
                         "kept_pct": 100 * summary["kept"] / listed, "p_at_1": p1, "map_at_r": mapr, "queries": nq,
                         "rank1_all_listed": rank1_all(listed_labels, p1, nq),
                         "test_p_at_1": tp1, "test_map_at_r": tmapr, "test_queries": tnq, "embed_s": secs})
            if detector == detectors[0] and rule == args.rules.split(",")[0]:
                first = (f"{detector}, {rule}", dict(zip(df["image_id"], emb)), dict(zip(df["image_id"], df["identity"])))
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(0)
                pick = rng.choice(len(df), size=min(200, len(df)), replace=False)
                contact_sheet([crops / p for p in df["crop_path"].iloc[np.sort(pick)]], out / "contact_sheet.png",
                              f"200 random kept faces: {data.name}, {config.detector_config().describe()}, {rule}")
                side = np.minimum(df["box_w"], df["box_h"]).to_numpy()
                small = np.argsort(side, kind="stable")[:100]
                contact_sheet([crops / p for p in df["crop_path"].iloc[small]], out / "contact_sheet_smallest.png",
                              f"the 100 smallest kept faces ({side[small].min()}-{side[small].max()} px)")
    if args.reference:
        listing = listing.drop_duplicates("image_id")
        ids = listing["image_id"].tolist()
        ref = dlib_reference(data, ids, dict(zip(listing["image_id"], listing["identity"])))
        rows.append({"pipeline": "dlib (HOG + get_face_chip + compute_face_descriptor)", "detector": "dlib HOG, 1 upsample",
                     "several_faces": "largest", "listed": listed, "kept": ref["kept"],
                     "kept_pct": 100 * ref["kept"] / listed, "p_at_1": ref["p_at_1"], "map_at_r": ref["map_at_r"],
                     "queries": ref["queries"], "rank1_all_listed": ref["rank1_all"],
                     "test_p_at_1": float("nan"), "test_map_at_r": float("nan"), "test_queries": 0,
                     "embed_s": ref["seconds"]})
    same_photos = None
    if args.reference and first is not None:
        # Like for like: the photos both pipelines kept, each with its own embedding.
        name, ours, labels_of = first
        both = sorted(set(ours) & set(ref["embeddings"]))
        lab = np.asarray([labels_of[i] for i in both])
        a = leave_one_out(np.stack([ours[i] for i in both]), lab)
        b = leave_one_out(np.stack([ref["embeddings"][i] for i in both]), lab)
        same_photos = (f"on the {len(both)} photos both facerec ({name}) and dlib's pipeline kept: facerec "
                       f"precision@1 {a[0]:.4f}, MAP@R {a[1]:.4f}; dlib's pipeline {b[0]:.4f}, {b[1]:.4f}")
    notes = [same_photos] if same_photos else []
    if not args.no_lfw:
        from facerec.detect import DetectorConfig
        from facerec.eval.lfw import LFWCropConfig, lfw_verification
        from facerec.models.pretrained import record_lfw

        for detector in detectors:
            crop_cfg = LFWCropConfig(input_kind=kind, crop_size=int(meta.get("image_size")) if kind != "haar_crop" else None,
                                     detector=DetectorConfig(detector).settings())
            lfw = lfw_verification(args.lfw, ckpt, crop_config=crop_cfg)
            folds = ", ".join(f"{100 * a:.2f}" for a in lfw["per_fold"]["accuracy"])
            notes.append(f"LFW ({args.lfw}, {lfw['folds']} folds, {lfw['pairs']} pairs), {detector}: accuracy "
                         f"{100 * lfw['mean']:.2f} +- {100 * lfw['std']:.2f} % (folds {folds}); "
                         f"{lfw['centre_fallback']} centre-box fallbacks of {lfw['images']} images")
            if detector == DetectorConfig().name:
                record_lfw(ckpt, lfw, args.lfw)
    df = pd.DataFrame(rows)
    write_table(df, args.out, "bench_accuracy", f"Accuracy of {args.model} ({kind}) on {data.name}", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
