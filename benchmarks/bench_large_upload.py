"""What one large JPEG costs an Embedder: the same photo enlarged to 6000 x 6500 (about 1 MB),
embedded by ``FaceEmbedderCore`` (what a replica runs: decode, detection, landmarks, chip,
forward) with the reduced decode (``decode_image_reduced``: the JPEG decoder scales by 1/2..1/8,
never below 1600 px or ``detect_max_side`` on the long side) and without it (every pixel decoded,
as before), in the same run, alternating, plus the original photo for scale.

    python benchmarks/bench_large_upload.py                  # dlib_resnet (the served default), 5 rounds
    python benchmarks/bench_large_upload.py --checkpoint DIR --rounds 3

The photo is the first of ../shared/data/celeba-sample with an accepted face (a synthetic one
without it). Besides the times it checks that both ways answer the same box (within a few pixels
of 6000) and reports the distance between their embeddings. Writes CSV + Markdown to --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, write_table  # noqa: E402


def _photo() -> tuple[str, bytes]:
    from facerec.data.images import decode_image
    from facerec.detect import DetectorConfig

    det = DetectorConfig().build()
    folder = SHARED_DATA / "celeba-sample" / "img_celeba"
    if folder.is_dir():
        for p in sorted(folder.glob("*.jpg"))[:50]:
            if len(det.find(decode_image(p.read_bytes()))):
                return str(p), p.read_bytes()
    import tempfile

    from facerec.data.synth import generate_synthetic

    root = generate_synthetic(Path(tempfile.mkdtemp()), n_identities=2, images_per_identity=2, seed=3, progress=False)
    p = sorted((root / "img_celeba").glob("*.jpg"))[0]
    return f"synthetic {p.name}", p.read_bytes()


def enlarge(data: bytes, width: int, height: int, quality: int) -> bytes:
    """The photo resized to width x height, with a little noise (a camera's grain: without it the
    enlarged photo compresses to a fraction of a real photo's bytes)."""
    import cv2

    from facerec.data.images import decode_image, encode_jpeg

    big = cv2.resize(decode_image(data), (width, height), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).integers(-6, 7, big.shape, dtype=np.int16)
    return encode_jpeg(np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8), quality=quality)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="dlib_resnet", help="served model (a pretrained name or a checkpoint folder)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)

    from facerec.models.onnx_runtime import cpu_export
    from facerec.models.pretrained import resolve_checkpoint
    from facerec.serve.embedder import FaceEmbedderCore

    source, data = _photo()
    big = enlarge(data, 6000, 6500, 50)
    checkpoint = resolve_checkpoint(args.checkpoint)
    onnx = cpu_export(checkpoint)  # the runtime a served replica uses (build_app exports it the same way)
    core = FaceEmbedderCore(checkpoint, runtime="auto", onnx_path=onnx, device="cpu")
    reduced_side = core.decode_min_side
    cases = {"photo (original)": (data, reduced_side), "6000x6500 reduced decode": (big, reduced_side),
             "6000x6500 full decode (before)": (big, None)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    answers = {}
    for name, (photo, side) in cases.items():  # warm-up, and the answers compared below
        core.decode_min_side = side
        answers[name] = core.embed_many([(photo, "largest", False)])[0]
        assert answers[name]["ok"], answers[name]
    for _ in range(args.rounds):
        for name, (photo, side) in cases.items():  # alternating: both see the same machine load
            core.decode_min_side = side
            t0 = time.perf_counter()
            core.embed_many([(photo, "largest", False)])
            times[name].append(time.perf_counter() - t0)
    core.decode_min_side = reduced_side
    red, full = answers["6000x6500 reduced decode"], answers["6000x6500 full decode (before)"]
    box_diff = int(np.max(np.abs(np.subtract(red["faces"][0]["box"], full["faces"][0]["box"]))))
    emb_dist = float(np.linalg.norm(red["faces"][0]["embedding"] - full["faces"][0]["embedding"]))
    import pandas as pd

    rows = [{"input": name, "bytes": len(cases[name][0]), "median_ms": statistics.median(t) * 1e3,
             "min_ms": min(t) * 1e3, "box": str(answers[name]["faces"][0]["box"])} for name, t in times.items()]
    ratio = statistics.median(times["6000x6500 full decode (before)"]) / statistics.median(times["6000x6500 reduced decode"])
    write_table(pd.DataFrame(rows), args.out, "bench_large_upload",
                f"Embedder time of a large JPEG, reduced vs full decode ({core.runtime}, {args.checkpoint})",
                [f"photo: {source}; enlarged to 6000 x 6500, JPEG quality 50, {len(big):,} bytes; {args.rounds} rounds, "
                 f"alternating", f"reduced decode: long side >= {reduced_side} px (1/4 here: 1500 x 1625)",
                 f"full / reduced median time: {ratio:.1f}x", f"largest box difference between the two: {box_diff} px; "
                 f"embedding distance between the two: {emb_dist:.4f}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
