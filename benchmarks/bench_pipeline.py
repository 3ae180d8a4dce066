"""Photos -> embeddings end to end: the Ray Data path (one fused actor per CPU:
decode -> Haar -> landmarks -> aligned chip -> dlib_resnet forward) against a single-process loop
of the same steps (``PhotoSteps``: OpenCV single-threaded, torch on every core, batches of the
same size), in one run, on the same photos.

    python benchmarks/bench_pipeline.py                       # all photos of ../shared/data/celeba-sample
    python benchmarks/bench_pipeline.py --limit 2000 --batch-size 16 --repeats 2

Both must give the same embeddings for the same photos (max |difference| is reported; the
forward runs in batches of different composition, so float reductions may differ in the last
bits). Ray Data's detached helper actors are started before the clock, like the cluster; the
actor pool's start (processes, imports, loading the model) is inside the timed span.
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


def loop(paths: list[str], model: str, batch_size: int, threads: int) -> tuple[np.ndarray, float]:
    from facerec.eval.photos import PhotoSteps

    t0 = time.perf_counter()
    steps = PhotoSteps(model, torch_threads=threads, opencv_threads=1)
    out = [steps.embed(paths[i:i + batch_size])[0] for i in range(0, len(paths), batch_size)]
    return np.concatenate(out), time.perf_counter() - t0


def ray_path(paths: list[str], model: str, batch_size: int) -> tuple[np.ndarray, float]:
    from facerec.eval.photos import embed_photos

    t0 = time.perf_counter()
    emb, _, _ = embed_photos(paths, model, batch_size=batch_size, progress=False)
    return emb, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"), help="CelebA-layout folder")
    ap.add_argument("--limit", type=int, default=0, help="first N listed photos (0: all)")
    ap.add_argument("--model", default="dlib_resnet", help="checkpoint folder or pretrained name")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each engine, alternating which goes first")
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
    rows, ref = [], None
    for rep in range(args.repeats):
        order = ["loop", "ray"] if rep % 2 == 0 else ["ray", "loop"]
        for engine in order:
            if engine == "loop":
                emb, secs = loop(paths, args.model, args.batch_size, os.cpu_count() or 1)
            else:
                emb, secs = ray_path(paths, args.model, args.batch_size)
            ok = ~np.isnan(emb).any(1)
            if ref is None:
                ref = emb
            same = bool(np.array_equal(np.isnan(ref).any(1), ~ok))
            diff = float(np.nanmax(np.abs(emb[ok] - ref[ok]))) if ok.any() else float("nan")
            rows.append({"run": rep + 1, "engine": engine, "photos": len(paths), "faces": int(ok.sum()),
                         "seconds": secs, "photos_per_s": len(paths) / secs,
                         "same_faces_as_first": same, "max_abs_diff_vs_first": diff})
    df = pd.DataFrame(rows)
    med = df.groupby("engine")["seconds"].median()
    ratio = med["loop"] / med["ray"]
    notes = [f"Ray Data path / single-process loop (ratio of median times): {ratio:.2f}x (target >= 1.7x); "
             f"{cpus} CPUs, model {args.model}, batch {args.batch_size}",
             f"Ray Data helper actors started before the clock in {warm:.1f} s"]
    write_table(df, args.out, "bench_pipeline", "Photos to embeddings: Ray Data path vs single-process loop", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
