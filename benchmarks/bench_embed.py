"""Embedding throughput: the Ray Data actor pool of ``facerec.gallery.embed`` vs a bare in-process
loop over the same crops, model, batch size and torch thread count.

Reported per configuration: wall seconds and images/s of the whole call (actor start-up and
model loading included) and images/s inside the actors (decode + forward only), which is what
a large gallery converges to. Configurations alternate ``--repeats`` times to average out load
from other processes; medians are reported.

    python benchmarks/bench_embed.py --crops out/celeba-sample-crops --checkpoint runs/cpu-sweep/<trial>/best --n 512
    python benchmarks/bench_embed.py --crops CROPS --backbone resnet18 --image-size 112 --actors 1,2 --out runs/bench-embed
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def bare_loop(paths: list[Path], checkpoint: str, batch_size: int, threads: int) -> tuple[float, np.ndarray]:
    """Seconds of decode + forward over ``paths`` in this process (model loading not timed)."""
    import torch

    from facerec.data.images import read_image
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    torch.set_num_threads(threads)
    model, meta = load_embedder(checkpoint)
    tf = test_transform(int(meta["image_size"]))
    out = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch_size):
            x = torch.stack([tf(read_image(p)) for p in paths[i:i + batch_size]])
            out.append(model(x).numpy())
    return time.perf_counter() - t0, np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", required=True)
    ap.add_argument("--checkpoint", help="checkpoint folder (else --backbone initial weights)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--n", type=int, default=512, help="crops embedded per run")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--actors", default="1", help="comma list of actor pool sizes")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", help="folder for bench_embed.md / .csv")
    args = ap.parse_args(argv)

    import pandas as pd
    import ray

    from facerec.data.schema import load_crops
    from facerec.gallery.embed import EmbedConfig, embed_crops_with_stats
    from facerec.io import atomic_write_text
    from facerec.models.checkpoint import save_initial_checkpoint
    from facerec.ray_utils import init_ray

    df, meta = load_crops(args.crops)
    df = df.iloc[: args.n].reset_index(drop=True)
    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = tempfile.mkdtemp(prefix="bench-embed-")
        save_initial_checkpoint(args.backbone, ckpt, args.image_size, data_version=meta.get("data_version"))
    init_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    paths = [Path(args.crops) / p for p in df["crop_path"]]
    actor_list = [int(a) for a in args.actors.split(",")]
    rows = []
    reference = None
    for rep in range(args.repeats):
        secs, emb = bare_loop(paths, ckpt, args.batch_size, cpus)
        reference = emb
        rows.append({"config": f"bare loop, {cpus} threads", "repeat": rep, "wall_s": secs,
                     "images_per_s": len(df) / secs, "actor_images_per_s": len(df) / secs})
        for a in actor_list:
            emb, st = embed_crops_with_stats(df, args.crops, ckpt, EmbedConfig(batch_size=args.batch_size, num_actors=a,
                                                                               progress=False))
            assert np.allclose(emb, reference, atol=1e-4), "Ray embeddings differ from the bare loop"
            rows.append({"config": f"ray data, {st['actors']} actor(s) x {st['threads']} threads", "repeat": rep,
                         "wall_s": st["seconds"], "images_per_s": st["images_per_second"],
                         "actor_images_per_s": len(df) / st["compute_seconds"] * st["actors"]})
    res = pd.DataFrame(rows)
    med = res.groupby("config", sort=False)[["wall_s", "images_per_s", "actor_images_per_s"]].median().reset_index()
    lines = [f"# Embedding throughput ({len(df)} crops, batch {args.batch_size}, {cpus} CPUs, medians of {args.repeats})",
             "", "| config | wall s | images/s (wall) | images/s (decode + forward) |", "|---|---|---|---|"]
    lines += [f"| {r.config} | {r.wall_s:.1f} | {r.images_per_s:.1f} | {r.actor_images_per_s:.1f} |" for r in med.itertuples()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(Path(args.out) / "bench_embed.md", text)
        atomic_write_text(Path(args.out) / "bench_embed.csv", res.to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
