"""Does the default model recognise faces? Identity retrieval on celeba-sample and LFW verification,
measured end to end through facerec's own stages, beside dlib's own pipeline (the reference that
``face_recognition`` wraps) when dlib is installed.

    python benchmarks/bench_accuracy.py                     # dlib_resnet, both several-faces rules, LFW
    python benchmarks/bench_accuracy.py --model RUN/<trial>/best --rules drop --no-lfw

Per rule for photos where Haar finds several faces (``drop``: the study's; ``largest``): the
photos kept, and precision@1 / MAP@R (Musgrave et al. 2020) of leave-one-out retrieval among all
kept photos (each photo queries every other; identities with one kept photo are no query) and on
the official test partition alone. LFW: 10-fold-style accuracy over the folds of pairs.txt,
thresholds fit on the other folds (facerec.eval.lfw). The dlib reference row: dlib's HOG detector,
its 5-point landmarks, ``get_face_chip`` and ``compute_face_descriptor`` on the same photos.
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


def leave_one_out(emb: np.ndarray, labels: np.ndarray) -> tuple[float, float, int]:
    """(precision@1, MAP@R, queries) of leave-one-out L2 retrieval among the embeddings as the model
    gives them: each photo queries all the others; photos whose identity has no other photo are
    no query (``facerec.eval.metrics.leave_one_out_metrics``, the validation metric of training)."""
    from facerec.eval.metrics import leave_one_out_metrics

    x = np.asarray(emb, dtype=np.float64)
    labels = np.asarray(labels)
    counts = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy()
    m = leave_one_out_metrics(x, labels)
    return m["precision_at_1"], m["map_at_r"], int((counts >= 2).sum())


def dlib_reference(data: Path, ids: list[str], labels: dict[str, int]) -> dict:
    import dlib

    from facerec.data.images import read_image
    from facerec.dlibport.files import RESNET, SHAPE_5, locate

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(locate(SHAPE_5)))
    net = dlib.face_recognition_model_v1(str(locate(RESNET)))
    from facerec.data.celeba import find_image_dir

    image_dir = find_image_dir(data)
    emb, lab = [], []
    t0 = time.perf_counter()
    for i in ids:
        rgb = read_image(image_dir / i)
        faces = det(rgb, 1)
        if len(faces) == 0:
            continue
        face = max(faces, key=lambda r: r.area())
        chip = dlib.get_face_chip(rgb, sp(rgb, face), size=150, padding=0.25)
        emb.append(np.asarray(net.compute_face_descriptor(chip)))
        lab.append(labels[i])
    p1, mapr, nq = leave_one_out(np.asarray(emb), np.asarray(lab))
    return {"kept": len(emb), "p_at_1": p1, "map_at_r": mapr, "queries": nq, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"))
    ap.add_argument("--lfw", default=str(SHARED_DATA / "lfw-sample"))
    ap.add_argument("--no-lfw", action="store_true")
    ap.add_argument("--model", default="dlib_resnet", help="checkpoint folder or pretrained name")
    ap.add_argument("--rules", default="drop,largest", help="several-faces rules to compare")
    ap.add_argument("--reference", action="store_true", help="also run dlib's own pipeline (needs dlib-bin)")
    ap.add_argument("--work", default="results/bench_accuracy/work", help="crops folders (reused when present)")
    ap.add_argument("--out", default="results/bench_accuracy")
    args = ap.parse_args(argv)

    from facerec.data.celeba import load_celeba
    from facerec.data.inputs import kind_of
    from facerec.data.preprocess import PreprocessConfig, preprocess
    from facerec.data.schema import load_crops
    from facerec.eval.embed import embed_crops
    from facerec.models import read_checkpoint_metadata
    from facerec.models.pretrained import resolve_checkpoint

    ckpt = resolve_checkpoint(args.model)
    meta = read_checkpoint_metadata(ckpt)
    kind = kind_of(meta).name
    data = Path(args.data)
    listed = len(load_celeba(data))
    rows = []
    for rule in [r for r in args.rules.split(",") if r]:
        crops = Path(args.work) / f"{data.name}-{kind}-{rule}"
        summary = preprocess(data, crops, PreprocessConfig(input_kind=kind, several_faces=rule), progress=False)
        df, _ = load_crops(crops)
        t0 = time.perf_counter()
        emb = embed_crops(df, crops, ckpt, progress=False)
        secs = time.perf_counter() - t0
        p1, mapr, nq = leave_one_out(emb, df["identity"].to_numpy())
        test = (df["partition"] == 2).to_numpy()
        tp1, tmapr, tnq = leave_one_out(emb[test], df["identity"].to_numpy()[test])
        rows.append({"pipeline": f"facerec {args.model}", "several_faces": rule, "listed": listed,
                     "kept": summary["kept"], "kept_pct": 100 * summary["kept"] / listed,
                     "p_at_1": p1, "map_at_r": mapr, "queries": nq,
                     "test_p_at_1": tp1, "test_map_at_r": tmapr, "test_queries": tnq, "embed_s": secs})
    if args.reference:
        listing = load_celeba(data).drop_duplicates("image_id")
        ids = listing["image_id"].tolist()
        ref = dlib_reference(data, ids, dict(zip(listing["image_id"], listing["identity"])))
        rows.append({"pipeline": "dlib (HOG + get_face_chip + compute_face_descriptor)", "several_faces": "largest",
                     "listed": listed, "kept": ref["kept"], "kept_pct": 100 * ref["kept"] / listed,
                     "p_at_1": ref["p_at_1"], "map_at_r": ref["map_at_r"], "queries": ref["queries"],
                     "test_p_at_1": float("nan"), "test_map_at_r": float("nan"), "test_queries": 0,
                     "embed_s": ref["seconds"]})
    notes = []
    if not args.no_lfw:
        from facerec.eval.lfw import lfw_verification
        from facerec.models.pretrained import record_lfw

        lfw = lfw_verification(args.lfw, ckpt)
        folds = ", ".join(f"{100 * a:.2f}" for a in lfw["per_fold"]["accuracy"])
        notes.append(f"LFW ({args.lfw}, {lfw['folds']} folds, {lfw['pairs']} pairs): accuracy "
                     f"{100 * lfw['mean']:.2f} +- {100 * lfw['std']:.2f} % (folds {folds}); "
                     f"{lfw['centre_fallback']} centre-box fallbacks of {lfw['images']} images")
        record_lfw(ckpt, lfw, args.lfw)
    df = pd.DataFrame(rows)
    write_table(df, args.out, "bench_accuracy", f"Accuracy of {args.model} ({kind}) on {data.name}", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
