"""Does "same person" hold for a search? The issue's open-set targets measured on real faces.

    python benchmarks/bench_openset.py                     # celeba-sample gallery, lfw-sample strangers
    python benchmarks/bench_openset.py --crops ~/.cache/facerec/crops/celeba-sample-<key> --folds 10

celeba-sample as the gallery (its MTCNN aligned chips, as ``facerec serve --data`` makes them, embedded
with the model), cross-validated by identity (:func:`facerec.eval.openset_cv.cross_validated_open_set`):
its people dealt into ``--folds`` folds; per held-out fold the gallery is the other folds' people
(``all``: about (folds-1)/folds of the sample) or a tenth of the sample's people (``tenth``), its
threshold chosen at each target FPIR by :func:`facerec.gallery.openset.gallery_threshold` on that gallery
alone -- as the server chooses it for the gallery it serves --, FPIR measured with the held-out people's
faces searching it (non-mated), FNIR with the gallery's leave-one-out mated searches. Two rules:

- ``gallery``: the served rule (measured on the gallery; the model's 1:1 impostor curve where the
  gallery is too small to measure a target, and as a cap);
- ``fallback``: the calibration-only rule of an unlabelled gallery (the impostor curve for N faces).

The impostor curve is that of the calibration dlib_resnet ships (``facerec/models/calibrations``,
measured on lfw-sample: no CelebA face in it) or ``--calibration FILE``.

Strangers: lfw-sample's people, one photo each (the first listed whose face the detector found),
search the whole celeba-sample gallery at its served threshold (target FPIR ``--target``); the ones
that get a match are written as a contact sheet (``strangers_matched.png``: query | rank-1 hit, the
aligned chips) for a person to look at: CelebA names no one, so some may be the same celebrity.

Writes bench_openset.csv/.md (the table) and strangers.csv into ``--out``; embeddings are cached
in ``--work``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._common import SHARED_DATA, write_table  # noqa: E402


def _cached(path: Path, make) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    arr = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


def pair_sheet(pairs: list[tuple[Path, Path, str]], out: Path, title: str, side: int = 112) -> None:
    """One row per (query, hit, caption): the two images side by side, the caption under them."""
    import cv2

    from facerec.data.images import encode_png, read_image
    from facerec.io import atomic_write_bytes

    cols = 4  # pairs per row
    rows = max(1, -(-len(pairs) // cols))
    cell_w, cell_h = 2 * side + 12, side + 18
    sheet = np.full((rows * cell_h + 24, cols * cell_w, 3), 255, np.uint8)
    cv2.putText(sheet, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (a, b, caption) in enumerate(pairs):
        r, c = divmod(k, cols)
        y, x = 24 + r * cell_h, c * cell_w
        for j, p in enumerate((a, b)):
            sheet[y:y + side, x + j * side:x + (j + 1) * side] = cv2.resize(read_image(p), (side, side),
                                                                           interpolation=cv2.INTER_AREA)
        cv2.putText(sheet, caption[:40], (x + 2, y + side + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1,
                    cv2.LINE_AA)
    atomic_write_bytes(out, encode_png(sheet))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"), help="the gallery's photos (CelebA layout)")
    ap.add_argument("--crops", help="its preprocessed folder (default: made or reused in the facerec cache, as "
                                    "`facerec serve --data` does)")
    ap.add_argument("--lfw", default=str(SHARED_DATA / "lfw-sample"), help="strangers' photos (LFW layout)")
    ap.add_argument("--model", default="dlib_resnet")
    ap.add_argument("--calibration", help="a calibration JSON with an impostor curve (default: the one shipped "
                                          "with --model)")
    ap.add_argument("--folds", type=int, default=10, help="identity folds (default 10: galleries of 90 %% of people)")
    ap.add_argument("--target", type=float, default=0.01, help="the served target FPIR (default 0.01)")
    ap.add_argument("--merge", default="", help="A=B,...: count identity B as A (CelebA lists some people under two "
                                                "identities; see suspect_duplicates.csv), a sensitivity check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="results/bench_openset/work", help="cached embeddings")
    ap.add_argument("--out", default="results/bench_openset")
    args = ap.parse_args(argv)

    from facerec.data.inputs import kind_of
    from facerec.data.preprocess import PreprocessConfig
    from facerec.data.schema import load_crops
    from facerec.detect import DetectorConfig, check_same_detector, crops_detector
    from facerec.eval.calibration import identity_folds
    from facerec.eval.openset_cv import cross_validated_open_set, rows
    from facerec.gallery.embed import embed_crops
    from facerec.gallery.openset import check_target, exact_search, gallery_threshold
    from facerec.io import read_parquet_metadata
    from facerec.models import read_checkpoint_metadata
    from facerec.models.calibration import shipped_path
    from facerec.models.pretrained import resolve_checkpoint

    target = check_target(args.target, "--target")
    t_start = time.perf_counter()
    ckpt = resolve_checkpoint(args.model)
    meta = read_checkpoint_metadata(ckpt)
    kind = kind_of(meta).name
    cal_file = Path(args.calibration) if args.calibration else shipped_path(meta)
    if cal_file is None:
        print(f"bench_openset: {args.model} ships no calibration; pass --calibration FILE", file=sys.stderr)
        return 2
    raw = json.loads(cal_file.read_text())
    cal = raw.get("calibration", raw)
    impostors = cal.get("impostors")
    if not impostors or cal.get("model_id") != meta["model_id"]:
        print(f"bench_openset: {cal_file} has no impostor curve of model_id {meta['model_id']}", file=sys.stderr)
        return 2
    detector = crops_detector(cal.get("data") or {})  # the gallery's faces found as the calibration's were

    # --- the gallery: celeba-sample's chips and their embeddings
    if args.crops:
        crops = Path(args.crops)
    else:
        from facerec.data.crops_cache import preprocessed

        crops = preprocessed(args.data, PreprocessConfig(input_kind=kind,
                                                         **DetectorConfig.from_settings(detector).as_fields()),
                             progress=False)
    crops_meta = read_parquet_metadata(crops / "crops.parquet")
    check_same_detector(crops_detector(crops_meta), detector, f"--crops {crops}", "pass crops of the calibration's detector")
    df, _ = load_crops(crops)
    key = hashlib.sha256(f"{meta['model_id']}|{crops_meta.get('data_version')}|{crops.resolve()}".encode()).hexdigest()[:12]
    emb = _cached(Path(args.work) / f"gallery-{key}.npy", lambda: embed_crops(df, crops, ckpt, progress=False))
    ids = df["identity"].to_numpy().copy()
    for pair in [p for p in args.merge.split(",") if p]:
        a, b = (int(v) for v in pair.split("="))
        ids[ids == b] = a
    folds = identity_folds(ids, args.folds, args.seed)
    print(f"bench_openset: gallery {crops} ({len(df)} faces of {len(np.unique(ids))} people), {args.folds} identity "
          f"folds; impostor curve of {cal_file} ({impostors['pairs']:,} pairs)", flush=True)

    # --- cross-validated open-set figures, the served rule and the calibration-only fallback
    targets = sorted({0.1, 0.01, 0.001, target}, reverse=True)
    table = []
    results = {}
    for rule, labelled in (("gallery", True), ("fallback", False)):
        res = cross_validated_open_set(emb, ids, folds, targets, impostors_of=lambda f: impostors, labelled=labelled,
                                       seed=args.seed)
        results[rule] = res
        table += [{"rule": rule, **r} for r in rows(res)]
    out_df = pd.DataFrame(table)

    # --- strangers: lfw-sample's people, one photo each, against the whole gallery
    from facerec.eval.lfw import LFWCropConfig, crop_lfw_images, default_crop_dir, read_lfw_pairs

    lfw_root = Path(args.lfw)
    pairs = read_lfw_pairs(lfw_root)
    images = sorted(set(pairs["path1"]) | set(pairs["path2"]))
    crop_cfg = LFWCropConfig(input_kind=kind, crop_size=int(meta.get("image_size")), detector=detector)
    lfw_dir = default_crop_dir(lfw_root, crop_cfg)
    lfw_crops = crop_lfw_images(lfw_root, images, lfw_dir, crop_cfg)
    first = lfw_crops[lfw_crops["method"] != "centre"].assign(person=lambda d: d["image"].str.split("/").str[-2])
    first = first.sort_values("image").groupby("person", sort=True).head(1).reset_index(drop=True)
    lkey = hashlib.sha256(f"{meta['model_id']}|{crop_cfg.fingerprint()}|{'|'.join(first['image'])}".encode()).hexdigest()[:12]
    q = _cached(Path(args.work) / f"lfw-{lkey}.npy", lambda: embed_crops(first, lfw_dir, ckpt, progress=False))
    served = gallery_threshold(emb, ids, target, impostors=impostors)
    served_fb = gallery_threshold(emb, ids, target, impostors=impostors, labelled=False)
    d, pos = exact_search(emb)(q, 1)
    d, pos = d[:, 0].astype(np.float64), pos[:, 0]
    strangers = first.assign(distance=d, hit_image=df["image_id"].to_numpy()[pos], hit_identity=ids[pos],
                             hit_crop=df["crop_path"].to_numpy()[pos],
                             match=d <= served["threshold"], match_fallback=d <= served_fb["threshold"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    strangers.drop(columns=["crop_path", "hit_crop"]).to_csv(out / "strangers.csv", index=False)
    matched = strangers[strangers["match"]].sort_values("distance")
    def caption(r) -> str:
        return f"{r.person} ~ {r.hit_image} ({r.distance:.3f})"

    if len(matched):
        pair_sheet([(lfw_dir / r.crop_path, crops / r.hit_crop, caption(r)) for r in matched.itertuples()],
                   out / "strangers_matched.png",
                   f"lfw-sample people matched in celeba-sample at t={served['threshold']:.4f} (FPIR {target:g}): "
                   f"query | rank-1 hit")
    nearest = strangers.sort_values("distance").head(24)  # what comes closest, matched or not
    pair_sheet([(lfw_dir / r.crop_path, crops / r.hit_crop, caption(r)) for r in nearest.itertuples()],
               out / "strangers_nearest.png", f"the 24 lfw-sample people nearest to a celeba-sample face "
               f"(served threshold {served['threshold']:.4f}): query | rank-1 hit")
    # Non-mated searches that land very near: CelebA sometimes lists one person under two identities,
    # which counts as a false match here. Identity pairs by how many faces' nearest non-mate is the other.
    d_all, p_all = exact_search(emb)(emb, 64)
    near = {}
    for i in range(len(ids)):
        other = (p_all[i] >= 0) & (p_all[i] != i) & (ids[np.maximum(p_all[i], 0)] != ids[i])
        if other.any():
            j = int(np.argmax(other))
            if d_all[i, j] <= served["threshold"]:
                key = tuple(sorted((int(ids[i]), int(ids[p_all[i, j]]))))
                near[key] = near.get(key, 0) + 1
    sus = pd.DataFrame([{"identity_a": a, "identity_b": b, "faces_matching_the_other": n} for (a, b), n in near.items()],
                       columns=["identity_a", "identity_b", "faces_matching_the_other"])
    sus = sus.sort_values("faces_matching_the_other", ascending=False)
    sus.to_csv(out / "suspect_duplicates.csv", index=False)

    # --- the targets and the report
    main_row = out_df[(out_df["rule"] == "gallery") & (out_df["gallery"] == "all") & (out_df["fpir_target"] == target)].iloc[0]
    g_all = next(g for g in results["gallery"]["galleries"] if g["gallery"] == "all")
    notes = [
        f"celeba-sample gallery: {len(df)} faces of {len(np.unique(ids))} people ({crops.name}; detector "
        f"{DetectorConfig.from_settings(detector).describe()}); "
        f"{args.folds} identity folds: 'all' galleries of about {g_all['gallery_size']} faces, 'tenth' of a tenth of "
        f"the people; every face searches once as a non-mated search",
        f"target FPIR {target:g} (the served default): FPIR {main_row['fpir']:.4f} held-out (target <= 0.02: "
        f"{'met' if main_row['fpir'] <= 0.02 else 'NOT met'}), FNIR {main_row['fnir']:.4f} leave-one-out (target <= "
        f"0.10: {'met' if main_row['fnir'] <= 0.10 else 'NOT met'}), thresholds {main_row['threshold']:.4f} +- "
        f"{main_row['threshold_std']:.4f} chosen by {main_row['method']}",
        f"strangers: {len(strangers)} lfw-sample people (one photo each) searched the whole gallery ({len(df)} faces) "
        f"at its served threshold {served['threshold']:.4f} ({served['method']}, measured FPIR "
        f"{served['measured_fpir'] if served['measured_fpir'] is None else round(served['measured_fpir'], 4)}): {int(strangers['match'].sum())} got a match "
        f"({100 * strangers['match'].mean():.1f} %); at the calibration-only threshold {served_fb['threshold']:.4f}: "
        f"{int(strangers['match_fallback'].sum())}; contact sheets: "
        f"{'strangers_matched.png (the matches), ' if len(matched) else ''}strangers_nearest.png (the 24 nearest)",
        f"non-mated searches of the whole gallery matched at its served threshold, by identity pair (most first; "
        f"suspect_duplicates.csv): " + ", ".join(f"{r.identity_a}/{r.identity_b}: {r.faces_matching_the_other}"
                                                 for r in sus.head(5).itertuples()),
        f"the 1:1 threshold at FAR 1e-3 of the same calibration would have matched "
        f"{int((strangers['distance'] <= next(p['threshold'] for p in cal['operating_points'] if p['far'] == 0.001)).sum())}",
        f"{time.perf_counter() - t_start:.0f} s in all",
    ]
    if args.merge:
        notes.insert(0, f"identities merged: {args.merge}")
    write_table(out_df, out, "bench_openset", f"Open-set identification of {args.model} on {Path(args.data).name}", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
