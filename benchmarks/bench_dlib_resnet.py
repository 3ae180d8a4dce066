"""dlib's face recognition ResNet: dlib itself vs the PyTorch port (``facerec.dlibport.resnet``),
on real face chips, in one process.

Chips: CelebA photos -> dlib's HOG detector (no upsampling; the largest face) -> 5-point
landmarks -> ``dlib.get_face_chip(img, shape, size=150, padding=0.25)``, the alignment dlib's
``compute_face_descriptor(img, shape)`` uses. Parity: dlib's ``compute_face_descriptor(chip)``
vs the port on every chip (max |difference| of a component, L2 distance). Throughput: one
batch of ``--batch-size`` chips, dlib's batch call ``compute_face_descriptor(list_of_chips)``
vs the port (uint8 chips in, descriptors out) under ``torch.set_num_threads(--threads)``;
the two alternate ``--repeats`` times after a warm-up and medians are reported.

    python benchmarks/bench_dlib_resnet.py                      # ../shared/data/celeba-sample
    python benchmarks/bench_dlib_resnet.py --chips 64 --repeats 5 --out results/bench_dlib_resnet
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._common import SHARED_DATA, write_table  # noqa: E402


def face_chips(paths: list[Path], n: int, shape_predictor: str) -> tuple[list[np.ndarray], int]:
    """Up to ``n`` aligned 150x150 chips, one per photo with a face; returns them and how
    many photos were read."""
    import dlib

    from facerec.data.images import read_image

    detector = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(shape_predictor)
    chips, read = [], 0
    for p in paths:
        if len(chips) >= n:
            break
        read += 1
        img = np.ascontiguousarray(read_image(p))
        faces = detector(img, 0)
        if not faces:
            continue
        face = max(faces, key=lambda r: r.area())
        chips.append(np.asarray(dlib.get_face_chip(img, sp(img, face), size=150, padding=0.25)))
    return chips, read


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "celeba-sample"), help="CelebA-layout folder (img_celeba/*.jpg)")
    ap.add_argument("--chips", type=int, default=48, help="face chips compared (>= 40)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="results/bench_dlib_resnet")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import dlib
    import torch

    from facerec.dlibport import files
    from facerec.dlibport.resnet import build_dlib_resnet

    torch.set_num_threads(args.threads)
    paths = sorted((Path(args.data) / "img_celeba").glob("*.jpg"))
    if not paths:
        sys.exit(f"no photos in {Path(args.data) / 'img_celeba'}")
    t0 = time.perf_counter()
    chips, read = face_chips(paths, args.chips, str(files.locate(files.SHAPE_5)))
    t_chips = time.perf_counter() - t0
    if len(chips) < min(args.chips, args.batch_size):
        sys.exit(f"only {len(chips)} faces in {read} photos")

    net = dlib.face_recognition_model_v1(str(files.locate(files.RESNET)))
    t0 = time.perf_counter()
    model = build_dlib_resnet()
    t_load = time.perf_counter() - t0

    # Parity, chip by chip (dlib's single-chip call).
    want = np.array([np.array(net.compute_face_descriptor(c)) for c in chips])
    got = model.embed(chips, batch_size=args.batch_size)
    absdiff = np.abs(got.astype(np.float64) - want)
    l2 = np.linalg.norm(got - want, axis=1)
    norms = np.linalg.norm(want, axis=1)

    # Throughput on one batch: dlib's list call vs the port.
    batch = chips[: args.batch_size]
    nb = len(batch)

    def run_dlib():
        try:
            out = net.compute_face_descriptor(batch)
        except TypeError:  # a dlib without the batch overload: one chip at a time
            out = [net.compute_face_descriptor(c) for c in batch]
        return np.array([np.array(v) for v in out])

    def run_port():
        return model.embed(batch, batch_size=nb)

    assert np.abs(run_dlib() - run_port()).max() <= 1e-4  # warm-up, and the batch call agrees
    times = {"dlib compute_face_descriptor(list)": [], "port DlibResNet.embed": []}
    cpu = {k: [] for k in times}
    for r in range(args.repeats):
        order = [("dlib compute_face_descriptor(list)", run_dlib), ("port DlibResNet.embed", run_port)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            c, t = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["dlib compute_face_descriptor(list)"]
    # cores_busy: CPU seconds per wall second (dlib's CPU DNN runs on one core whatever --threads).
    rows = [{"implementation": k, "batch": nb, "threads": args.threads, "runs": len(v), "median_s": med[k], "min_s": min(v),
             "images_per_s": nb / med[k], "speedup_vs_dlib": base / med[k], "cores_busy": sum(cpu[k]) / sum(v)}
            for k, v in times.items()]
    df = pd.DataFrame(rows)
    notes = [
        f"parity over {len(chips)} real chips ({read} CelebA photos read, HOG + 5-point landmarks + get_face_chip "
        f"in {t_chips:.1f} s): max |component difference| {absdiff.max():.3g} (target <= 1e-5), "
        f"L2 distance mean {l2.mean():.3g}, max {l2.max():.3g}; dlib descriptor norms {norms.min():.3f}-{norms.max():.3f}",
        f"port: weights from the cache or the .dat in {t_load:.2f} s; torch {torch.__version__}, "
        f"{args.threads} intra-op threads; dlib {dlib.__version__} (BLAS {dlib.DLIB_USE_BLAS}, CUDA {dlib.DLIB_USE_CUDA})",
        f"speedup target >= 10x: {'met' if rows[1]['speedup_vs_dlib'] >= 10 else 'NOT met'}; "
        f"parity target: {'met' if absdiff.max() <= 1e-5 else 'NOT met'}",
    ]
    write_table(df, args.out, "bench_dlib_resnet", "dlib face recognition ResNet: dlib vs the PyTorch port", notes)
    return 0 if absdiff.max() <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
