"""Photos -> embeddings end to end, in one run, on the same photos and cores:

- ``ray-mtcnn`` / ``ray-haar``: the Ray Data path (one fused actor per CPU: decode -> the detector
  and its gate -> landmarks -> aligned chip -> dlib_resnet forward), with the default detector and
  with the study's Haar cascade;
- ``dlib``: dlib's own pipeline, one process per core (what ``face_recognition`` runs): its HOG
  detector with one upsample, its 5-point landmarks, ``get_face_chip`` and
  ``compute_face_descriptor`` of the largest face (needs ``dlib-bin``, a dev extra);
- ``loop`` (``--engines`` to add it): a single-process loop of facerec's steps (``PhotoSteps``:
  OpenCV single-threaded, the model on every core, batches of the same size).

    python benchmarks/bench_pipeline.py                       # all photos of ../shared/data/celeba-sample
    python benchmarks/bench_pipeline.py --limit 2000 --engines ray-mtcnn,loop --repeats 2

facerec's engines with one detector must give the same embeddings for the same photos (max
|difference| to the first run of that detector is reported; the forward runs in batches of different
composition, so float reductions may differ in the last bits). Ray Data's detached helper actors are
started before the clock, like the cluster; the actor pool's start (processes, imports, loading the
model) is inside the timed span, as is the dlib pool's.
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


def loop(paths: list[str], model: str, batch_size: int, threads: int, detector: str) -> tuple[np.ndarray, float]:
    from facerec.detect import DetectorConfig
    from facerec.eval.photos import PhotoSteps

    t0 = time.perf_counter()
    steps = PhotoSteps(model, torch_threads=threads, opencv_threads=1, detector=DetectorConfig(detector).settings())
    out = [steps.embed(paths[i:i + batch_size])[0] for i in range(0, len(paths), batch_size)]
    return np.concatenate(out), time.perf_counter() - t0


def ray_path(paths: list[str], model: str, batch_size: int, detector: str) -> tuple[np.ndarray, float]:
    from facerec.detect import DetectorConfig
    from facerec.eval.photos import embed_photos

    t0 = time.perf_counter()
    emb, _, _ = embed_photos(paths, model, batch_size=batch_size, progress=False,
                             detector=DetectorConfig(detector).settings())
    return emb, time.perf_counter() - t0


_DLIB = {}


def _dlib_init() -> None:
    import cv2
    import dlib

    from facerec.dlibport.files import RESNET, SHAPE_5, locate

    cv2.setNumThreads(1)
    _DLIB.update(det=dlib.get_frontal_face_detector(), sp=dlib.shape_predictor(str(locate(SHAPE_5))),
                 net=dlib.face_recognition_model_v1(str(locate(RESNET))))


def _dlib_embed(path: str) -> np.ndarray:
    import dlib

    from facerec.data.images import read_image

    rgb = read_image(path)
    faces = _DLIB["det"](rgb, 1)
    if len(faces) == 0:
        return np.full(128, np.nan, np.float32)
    face = max(faces, key=lambda r: r.area())
    chip = dlib.get_face_chip(rgb, _DLIB["sp"](rgb, face), size=150, padding=0.25)
    return np.asarray(_DLIB["net"].compute_face_descriptor(chip), dtype=np.float32)


def dlib_pool(paths: list[str], processes: int) -> tuple[np.ndarray, float]:
    """dlib's own pipeline, one process per core (the pool's start is timed)."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(processes, initializer=_dlib_init) as pool:
        out = pool.map(_dlib_embed, paths, chunksize=16)
    return np.stack(out), time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"), help="CelebA-layout folder")
    ap.add_argument("--limit", type=int, default=0, help="first N listed photos (0: all)")
    ap.add_argument("--model", default="dlib_resnet", help="checkpoint folder or pretrained name")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each engine, rotating which goes first")
    ap.add_argument("--engines", default="ray-mtcnn,ray-haar,dlib", help="of ray-<detector>, loop[-<detector>], dlib")
    ap.add_argument("--out", default="results/bench_pipeline")
    args = ap.parse_args(argv)

    import os

    from benchmarks.bench_preprocess import warm_ray_data
    from facerec.data.celeba import find_image_dir, load_celeba
    from facerec.ray_utils import cluster_cpus, init_ray

    data = Path(args.data)
    listing = load_celeba(data)
    image_dir = find_image_dir(data)
    ids = listing["image_id"].drop_duplicates().tolist()
    ids = ids[: args.limit] if args.limit else ids
    paths = [str(image_dir / i) for i in ids]
    init_ray()
    cpus = cluster_cpus()
    warm = warm_ray_data()
    engines = [e for e in args.engines.split(",") if e]
    rows, refs = [], {}
    for rep in range(args.repeats):
        for engine in engines[rep % len(engines):] + engines[:rep % len(engines)]:
            kind, _, detector = engine.partition("-")
            detector = detector or "mtcnn"
            if kind == "loop":
                emb, secs = loop(paths, args.model, args.batch_size, os.cpu_count() or 1, detector)
            elif kind == "ray":
                emb, secs = ray_path(paths, args.model, args.batch_size, detector)
            else:
                emb, secs, detector = *dlib_pool(paths, cpus), "dlib HOG"
            ok = ~np.isnan(emb).any(1)
            ref = refs.setdefault(detector, emb)
            same = bool(np.array_equal(np.isnan(ref).any(1), ~ok))
            diff = float(np.nanmax(np.abs(emb[ok] - ref[ok]))) if ok.any() and same else float("nan")
            rows.append({"run": rep + 1, "engine": engine, "detector": detector, "photos": len(paths),
                         "faces": int(ok.sum()), "seconds": secs, "photos_per_s": len(paths) / secs,
                         "same_faces_as_first": same, "max_abs_diff_vs_first": diff})
    df = pd.DataFrame(rows)
    med = df.groupby("engine")["seconds"].median()
    notes = [f"{cpus} CPUs, model {args.model}, batch {args.batch_size}; Ray Data helper actors started before the "
             f"clock in {warm:.1f} s"]
    for base in ("dlib", "loop", "loop-mtcnn"):
        if base in med:
            for e in med.index:
                if e.startswith("ray"):
                    notes.append(f"{e} / {base} (ratio of median times): {med[base] / med[e]:.2f}x")
    write_table(df, args.out, "bench_pipeline", "Photos to embeddings: Ray Data path vs dlib's own pipeline", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
