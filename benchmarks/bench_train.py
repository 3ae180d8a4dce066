"""Training throughput: one Ray Train worker vs a bare PyTorch loop, same model, batches and data.

Both sides run the same P x K batches (same seeds), the same transforms and the same
forward/backward/Adam step (``facerec.train.loop.run_steps``) with the same torch thread count;
each times its second pass of ``--steps`` steps (the first warms up allocators and caches).
The Ray side is the real training path (``facerec.train.trainer.train``: TorchTrainer, dataset
shard, per-epoch validation and checkpoint, which are not in the timed span). Runs alternate
``--repeats`` times to average out load from other processes; the ratio of the medians is
reported (target >= 0.9).

    python benchmarks/bench_train.py --data /work/shared/data/celeba-sample --out runs/bench-train
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from facerec.io import atomic_write_json, atomic_write_text  # noqa: E402
from facerec.train.config import TrainConfig  # noqa: E402
from facerec.train.data import prepare_data, resolve_data  # noqa: E402


def bare_loop(cfg: TrainConfig, data) -> tuple[float, float]:
    """(images/s, images per CPU-second) of the second pass of ``cfg.steps_per_epoch`` steps in
    this process, no Ray."""
    from facerec.data.inputs import input_kind
    from facerec.losses import build_loss
    from facerec.models import build_embedder
    from facerec.train.batches import BATCH_PLANS, ImageCache, mix_seed
    from facerec.train.loop import TrainModule, run_steps

    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(mix_seed(cfg.seed, 0, 1))
    local = data.train[data.train["shard"] == 0].sort_values("crop_path").reset_index(drop=True)
    cache = ImageCache(cfg.data_dir, cfg.image_size, threads=max(2, cfg.cpus_per_worker))
    cache.add(local["crop_path"])
    plan = BATCH_PLANS.get(cfg.sampling)(cache, local, data.train, cfg, 0, 1)
    embedder = build_embedder(cfg.backbone, cfg.embedding_dim, cfg.freeze, cfg.weights)
    module = TrainModule(embedder, build_loss(cfg.loss, cfg.embedding_dim, data.num_classes, **cfg.loss_params))
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=cfg.lr)
    tf = input_kind(embedder.metadata["input_kind"]).train_transform(cfg.image_size)
    device = torch.device("cpu")
    rates = []
    for epoch in range(cfg.epochs):
        batches = plan.batches(epoch)[: cfg.steps_per_epoch]
        t0, c0 = time.perf_counter(), time.process_time()
        _, seen = run_steps(module, opt, batches, cache, tf, device, plan.triplets)
        rates.append((seen / (time.perf_counter() - t0), seen / (time.process_time() - c0)))
    return rates[-1]


def ray_worker(cfg: TrainConfig, data) -> tuple[float, float]:
    """(images/s, images per CPU-second) Ray Train reports for its last epoch (one worker)."""
    from facerec.train.trainer import train

    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        train(cfg, out, trial_name="bench", data=data)
        history = json.loads((Path(out) / "bench" / "history.json").read_text())
    last = history[-1]
    return last["images_per_second"], last["epoch_seconds"] * last["images_per_second"] / last["cpu_seconds"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="preprocessed or CelebA-layout folder (default: synthetic data)")
    ap.add_argument("--out", default="runs/bench-train")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--loss", default="arcface")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per pass")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads / worker CPUs")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker-niceness", type=int, default=0,
                    help="nice value of the Ray Train worker (TrainConfig.worker_niceness; Ray's default is 15)")
    args = ap.parse_args(argv)

    data_dir = resolve_data(args.data)
    cfg = TrainConfig(data_dir=str(data_dir), loss=args.loss, backbone=args.backbone, image_size=args.image_size,
                      p=args.p, k=args.k, epochs=2, steps_per_epoch=args.steps, cpus_per_worker=args.threads,
                      num_workers=1, use_gpu=False, val_max_images=64, max_failures=0, num_to_keep=1,
                      worker_niceness=args.worker_niceness)
    data = prepare_data(cfg)

    import ray

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    bare, rayw, bare_cpu, ray_cpu = [], [], [], []
    try:
        for i in range(args.repeats):
            # alternate which side goes first so a load trend on a shared machine favours neither
            for side in (("bare", "ray") if i % 2 == 0 else ("ray", "bare")):
                if side == "bare":
                    w, c = bare_loop(cfg, data)
                    bare.append(w)
                    bare_cpu.append(c)
                else:
                    w, c = ray_worker(cfg, data)
                    rayw.append(w)
                    ray_cpu.append(c)
            print(f"repeat {i + 1}: bare {bare[-1]:.1f} img/s ({bare_cpu[-1]:.1f}/CPU-s), "
                  f"ray train {rayw[-1]:.1f} img/s ({ray_cpu[-1]:.1f}/CPU-s)", flush=True)
    finally:
        ray.shutdown()
    b, r = statistics.median(bare), statistics.median(rayw)
    bc, rc = statistics.median(bare_cpu), statistics.median(ray_cpu)
    bb, rb = max(bare), max(rayw)  # best of N: the run least disturbed by other load
    load = os.getloadavg()
    result = {
        "backbone": args.backbone, "loss": args.loss, "image_size": args.image_size, "batch": args.p * args.k,
        "steps": args.steps, "threads": args.threads, "repeats": args.repeats, "data": str(data_dir),
        "worker_niceness": args.worker_niceness,
        "bare_images_per_second": bare, "ray_images_per_second": rayw,
        "bare_median": b, "ray_median": r, "ratio": r / b, "target": 0.9, "meets_target": r / b >= 0.9,
        "bare_images_per_cpu_second": bare_cpu, "ray_images_per_cpu_second": ray_cpu,
        "cpu_ratio": rc / bc, "best_ratio": rb / bb, "load_average_at_end": load,
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__,
    }
    out = Path(args.out)
    atomic_write_json(out / "bench_train.json", result)
    md = (f"# Training throughput: Ray Train worker vs bare PyTorch\n\n"
          f"{args.backbone}, {args.loss}, {args.image_size} px, batch {args.p}x{args.k}, {args.steps} timed steps, "
          f"{args.threads} threads, median of {args.repeats}; Ray worker at nice {args.worker_niceness}, "
          f"bare loop at nice {os.nice(0)}\n\n"
          f"| loop | images/s (runs) | median |\n|---|---|---|\n"
          f"| bare PyTorch | {', '.join(f'{v:.1f}' for v in bare)} | {b:.1f} |\n"
          f"| Ray Train (1 worker) | {', '.join(f'{v:.1f}' for v in rayw)} | {r:.1f} |\n\n"
          f"ratio Ray/bare = **{r / b:.3f}** (target >= 0.9); best of {args.repeats}: {rb:.1f} / {bb:.1f} = "
          f"**{rb / bb:.3f}**\n\n"
          f"Images per CPU-second of the training process (all its threads; insensitive to other load on "
          f"the machine): bare {bc:.2f}, Ray {rc:.2f}, ratio **{rc / bc:.3f}**. "
          f"Load average at the end: {load[0]:.1f} on {os.cpu_count()} CPUs.\n")
    atomic_write_text(out / "bench_train.md", md)
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
