"""Embed a crops folder on a Ray Data actor pool and build the retrieval gallery + index(es).

    python pipelines/build_index.py --crops out/celeba-sample-crops --checkpoint runs/cpu-sweep/<trial>/best --out out/gallery
    python pipelines/build_index.py --crops CROPS --backbone resnet18 --initial --out out/gallery-initial --kinds kdtree,exact
    python pipelines/build_index.py --crops CROPS --checkpoint r18=RUN/a/best --checkpoint mnv2=RUN/b/best --split test --out G

The output is a served gallery (``python pipelines/serve.py --gallery G`` serves it); layout in
facerec.gallery.build_index. ``--split test`` keeps only the identities held out of training
(the split recorded in the checkpoint; the checkpoint's data_version must match the crops).
"""

from __future__ import annotations

import argparse
import sys

from facerec.cli.common import add_embedding_arguments, comma_list, embedding_fields, reports_errors
from facerec.data.sources import check_crops
from facerec.errors import ConfigError
from facerec.models.pretrained import parse_checkpoints


def parse_args(argv=None) -> argparse.Namespace:
    from facerec.gallery.build_index import SPLIT_CHOICES
    from facerec.index import INDEXES
    from facerec.models import BACKBONES

    ap = argparse.ArgumentParser(prog="facerec build-index", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", required=True, help="preprocess output folder (crops.parquet + crops/)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="[NAME=]DIR",
                    help="checkpoint folder (RUN/<trial>/best) or a pretrained model name (e.g. dlib_resnet); "
                         "repeat for several models")
    ap.add_argument("--backbone", action="append", default=[], choices=BACKBONES.names(),
                    help="backbone for --initial (repeatable)")
    ap.add_argument("--initial", action="store_true", help="embed with the --backbone's initial weights (before fine-tuning)")
    ap.add_argument("--out", required=True, help="gallery folder to write")
    ap.add_argument("--split", default="all", choices=SPLIT_CHOICES)
    ap.add_argument("--kinds", default=["kdtree"], type=comma_list(choices=INDEXES.names()),
                    help=f"comma list of index kinds, the first served: {', '.join(INDEXES.names())} (default kdtree)")
    ap.add_argument("--image-size", type=int, help="input size of --initial models (default: the crop size)")
    ap.add_argument("--embedding-dim", type=int, default=128, help="embedding size of --initial models")
    add_embedding_arguments(ap)
    ap.add_argument("--seed", type=int, default=0, help="seed of random-init --initial heads")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing gallery at --out")
    return ap.parse_args(argv)


@reports_errors("facerec build-index")
def main(argv=None) -> int:
    from facerec.gallery.build_index import BuildIndexConfig, build_gallery_index

    args = parse_args(argv)
    if args.backbone and not args.initial:
        raise ConfigError("--backbone", args.backbone, "used with --initial (a checkpoint names its own backbone)")
    if args.initial and not args.backbone:
        raise ConfigError("--initial", True, "one or more --backbone NAME")
    checkpoints = parse_checkpoints(args.checkpoint)
    # A split is identity-disjoint: an unlabelled folder's crops have no identities to split by.
    check_crops(args.crops, labelled_for=f"--split {args.split}" if args.split != "all" else None)
    cfg = BuildIndexConfig(
        crops_dir=args.crops, out_dir=args.out, checkpoints=checkpoints,
        initial=list(args.backbone), split=args.split, kinds=args.kinds,
        image_size=args.image_size, embedding_dim=args.embedding_dim, seed=args.seed, overwrite=args.overwrite,
        **embedding_fields(args),
    )
    build_gallery_index(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
