"""Train a sweep of losses x backbones on Ray Tune + Ray Train and write the run folder.

    python pipelines/train_sweep.py                          # smoke preset on the embedded synthetic data
    python pipelines/train_sweep.py --preset cpu --data ../shared/data/celeba-sample --out runs/cpu-sweep
    ray job submit --working-dir . -- python pipelines/train_sweep.py --preset seed --data /data/celeba --out /shared/runs/seed

``--data`` is a preprocessed folder (crops.parquet + crops/) or a labelled photo folder (CelebA layout or
one folder per person, ``--layout``),
which is preprocessed first into ``--crops`` (default: a cache folder keyed by the photo folder).
Outputs: RUN/<trial>/best (model.pt + model.json), RUN/sweep_summary.{md,csv}, RUN/plots/*.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from facerec.cli.common import add_layout_argument, comma_list, reports_errors
from facerec.data.sources import check_source
from facerec.train.config import SAMPLINGS, SPLIT_MODES, data_prepared_later, sweep_input_kind
from facerec.train.data import resolve_data
from facerec.train.presets import PRESETS, build_sweep


def parse_args(argv=None) -> argparse.Namespace:
    from facerec.losses import LOSSES
    from facerec.models import BACKBONES, FREEZE_POLICIES

    ap = argparse.ArgumentParser(prog="facerec train-sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke", choices=PRESETS.names())
    ap.add_argument("--data", help="preprocessed folder, or a labelled photo folder: CelebA layout or one folder per "
                                   "person (default: synthetic data)")
    ap.add_argument("--crops", help="where to preprocess --data photos (default: ~/.cache/facerec/crops/...)")
    add_layout_argument(ap)
    ap.add_argument("--out", help="run folder (default: runs/<preset>-<time>); with `ray job submit` give an absolute "
                    "path (a relative one lands in the job's unpacked working dir), shared by all nodes on a cluster")
    ap.add_argument("--losses", "--loss", type=comma_list(choices=LOSSES.names()),
                    help=f"comma list of {', '.join(LOSSES.names())}")
    ap.add_argument("--backbones", type=comma_list(choices=BACKBONES.names()),
                    help=f"comma list of {', '.join(BACKBONES.names())}")
    ap.add_argument("--lrs", type=comma_list(float), help="comma list of learning rates to sweep")
    ap.add_argument("--margins", type=comma_list(float), help="comma list of margins to sweep (losses with a margin)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--embedding-dim", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--loss-lr", type=float, help="learning rate of the loss's class centres (default: --lr)")
    ap.add_argument("--p", type=int, help="identities per P x K batch")
    ap.add_argument("--k", type=int, help="images per identity in a P x K batch")
    ap.add_argument("--steps-per-epoch", type=int)
    ap.add_argument("--sampling", choices=SAMPLINGS.names())
    ap.add_argument("--freeze", choices=FREEZE_POLICIES.names())
    ap.add_argument("--weights", help="ImageNet state dict of the backbone (single-backbone sweeps)")
    ap.add_argument("--num-workers", type=int, help="Ray Train workers per trial")
    ap.add_argument("--cpus-per-worker", type=int)
    gpu = ap.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, help="train on GPUs")
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_const", const=False, help="train on CPUs")
    ap.add_argument("--max-failures", type=int)
    ap.add_argument("--worker-niceness", type=int, help="Unix nice value of the training workers (default 0; "
                    "Ray's own default, 15, lets any other process preempt the training threads)")
    ap.add_argument("--patience", type=int, help="early stopping: epochs without improvement")
    ap.add_argument("--val-max-images", type=int)
    ap.add_argument("--split-mode", choices=SPLIT_MODES)
    ap.add_argument("--val-fraction", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--max-concurrent", type=int, help="trials at once (default: from cluster resources)")
    ap.add_argument("--address", help="Ray to use: 'local' (a new local Ray), 'auto', or HOST:PORT; default: "
                    "RAY_ADDRESS (ray job submit), else the cluster of the last `ray start`, else local")
    ap.add_argument("--storage", help="Ray Train/Tune storage path (shared on multi-node clusters; default RUN/_ray)")
    return ap.parse_args(argv)


@reports_errors("facerec train-sweep")
def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or f"runs/{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    from facerec.ray_utils import init_ray

    if args.data is not None:
        check_source(args.data, layout=args.layout, labelled_for="train-sweep")
    backbones = args.backbones or PRESETS.get(args.preset)()["backbones"]
    kind = sweep_input_kind(backbones)
    train_overrides = {
        "epochs": args.epochs, "image_size": args.image_size, "embedding_dim": args.embedding_dim, "lr": args.lr,
        "loss_lr": args.loss_lr,
        "p": args.p, "k": args.k, "steps_per_epoch": args.steps_per_epoch, "sampling": args.sampling,
        "freeze": args.freeze, "weights": args.weights, "num_workers": args.num_workers,
        "cpus_per_worker": args.cpus_per_worker, "use_gpu": args.use_gpu, "max_failures": args.max_failures,
        "worker_niceness": args.worker_niceness,
        "patience": args.patience, "val_max_images": args.val_max_images, "split_mode": args.split_mode,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
    }
    sweep_overrides = {"losses": args.losses, "backbones": args.backbones, "lrs": args.lrs, "margins": args.margins,
                       "max_concurrent": args.max_concurrent, "storage_path": args.storage}
    with data_prepared_later():
        build_sweep(args.preset, str(args.data or "."), out, train_overrides, **sweep_overrides)
    init_ray(args.address)  # before preprocessing, whose Ray Data pipeline would otherwise pick a Ray itself
    data = resolve_data(args.data, args.crops, input_kind=kind, layout=args.layout)
    sweep = build_sweep(args.preset, str(data), out, train_overrides, **sweep_overrides)
    from facerec.train.sweep import run_sweep

    df = run_sweep(sweep, address=args.address)
    print(Path(out, "sweep_summary.md").read_text(), flush=True)
    return 0 if (df["status"] == "ok").all() else 1


if __name__ == "__main__":
    sys.exit(main())
