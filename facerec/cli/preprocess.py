"""``facerec preprocess``: photos -> face crops (or aligned chips) + crops.parquet on Ray Data;
``pipelines/preprocess.py`` calls the same ``main``."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from facerec.cli.common import add_detector_argument, add_layout_argument, reports_errors


def add_preprocess_arguments(ap: argparse.ArgumentParser) -> None:
    from facerec.data.preprocess import PreprocessConfig

    ap.add_argument("--data", help="photo folder: CelebA layout, one folder per person, or unlabelled photos "
                                   "(see --layout; default: the embedded synthetic dataset)")
    ap.add_argument("--out", required=True, help="output folder: crops/, crops.parquet, dropped.parquet, summary.json")
    ap.add_argument("--overwrite", action="store_true", help="discard earlier results in --out instead of resuming")
    from facerec.data.inputs import INPUT_KINDS
    from facerec.data.preprocess import SEVERAL_FACES_RULES

    defaults = PreprocessConfig()
    for f in fields(PreprocessConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "engine":
            ap.add_argument(flag, choices=["ray", "local"], default=default,
                            help="ray: Ray Data actor pool over the cluster; local: one process (baseline)")
        elif f.name == "input_kind":
            ap.add_argument(flag, choices=INPUT_KINDS.names(), default=default,
                            help="what to store per face: haar_crop (the study's crop, for the torchvision backbones) "
                                 "or aligned_chip_5pt (dlib's aligned 150 px chip, for dlib_resnet) (default %(default)s)")
        elif f.name == "several_faces":
            ap.add_argument(flag, choices=list(SEVERAL_FACES_RULES), default=default,
                            help="photos with several accepted faces: keep the largest face, drop them (the study's "
                                 "rule), or keep all of them, each its own row and crop (for `facerec cluster`; the "
                                 "labelled stages refuse such crops) (default %(default)s)")
        elif f.name == "layout":
            add_layout_argument(ap)
        elif f.name == "crop_size":
            ap.add_argument(flag, type=int, default=None, help="side of the stored input (default: the input kind's, 218 or 150)")
        else:
            add_detector_argument(ap, f.name, default)


@reports_errors("facerec preprocess")
def main(argv=None) -> int:
    from facerec.data.preprocess import PreprocessConfig, preprocess

    ap = argparse.ArgumentParser(prog="facerec preprocess",
                                 description="Find faces (MTCNN, or the study's Haar cascade) on Ray Data, crop or align them, and write the crops table.")
    add_preprocess_arguments(ap)
    args = ap.parse_args(argv)
    config = PreprocessConfig(**{f.name: getattr(args, f.name) for f in fields(PreprocessConfig)})
    data = args.data
    if data is None:
        from facerec.data.synth import ensure_synthetic

        data = ensure_synthetic()
    summary = preprocess(data, args.out, config, overwrite=args.overwrite)  # reads the listing before Ray starts
    print("preprocess summary: " + json.dumps(summary, sort_keys=True))
    return 0
