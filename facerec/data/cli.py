"""Command-line front ends of the data stage (``facerec data synth``, ``facerec preprocess``);
``pipelines/preprocess.py`` calls the same ``preprocess_main``."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from facerec.cli import reports_errors


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


def add_layout_argument(ap: argparse.ArgumentParser) -> None:
    """``--layout``: how a ``--data`` photo folder is read (:mod:`facerec.data.layouts`)."""
    from facerec.data.layouts import LAYOUTS

    ap.add_argument("--layout", choices=LAYOUTS.names(), default=None,
                    help="how --data is laid out: celeba (identity_CelebA.txt + img_align_celeba/), folder_per_person "
                         "(DATA/<person>/*.jpg) or unlabelled (photos in any folders, nobody named) "
                         "(default: detected from the folder)")


GATE_OPTIONS = ("detector", "min_confidence", "min_face", "scale_step")
"""The detector options of the commands that detect but do not preprocess (serve, calibrate)."""


def add_gate_arguments(ap: argparse.ArgumentParser) -> None:
    """``--detector``, ``--min-confidence``, ``--min-face``, ``--scale-step`` with the defaults of
    :class:`facerec.detect.DetectorConfig`; :func:`gate_fields` reads them back."""
    from facerec.detect import DetectorConfig

    defaults = DetectorConfig().as_fields()
    for name in GATE_OPTIONS:
        add_detector_argument(ap, name, defaults[name])


def gate_fields(args: argparse.Namespace) -> dict:
    """The :data:`GATE_OPTIONS` of parsed arguments, by field name."""
    return {f: getattr(args, f) for f in GATE_OPTIONS}


def add_detector_argument(ap: argparse.ArgumentParser, name: str, default, prefix: str = "") -> bool:
    """One option of the face detector and its gate (``facerec.detect.DetectorConfig``), shared by
    every command that detects faces; False when ``name`` is no detector setting (then a plain
    typed option is added)."""
    from facerec.detect import DETECTORS

    flag = "--" + prefix + name.replace("_", "-")
    helps = {
        "detector": ("face detector (default %(default)s; haar is the study's two-pass cascade)", str),
        "min_confidence": ("face gate: lowest detector score accepted, 0-1 (default: the detector's)", float),
        "min_face": ("face gate: smallest face accepted, pixels of its box's shorter side (default: the detector's)", int),
        "scale_step": ("ratio between the detector's pyramid scales, > 1 (default: the detector's; Haar 1.1)", float),
        "min_neighbors": ("Haar only: the cascade's minNeighbors (default %(default)s)", int),
        "detect_max_side": ("photos are scanned at most at this side, pixels (default %(default)s)", int),
    }
    if name not in helps:
        kind = float if isinstance(default, float) else int
        ap.add_argument(flag, type=kind, default=default, help=f"(default {default})")
        return False
    text, kind = helps[name]
    if name == "detector":
        ap.add_argument(flag, choices=DETECTORS.names(), default=default, help=text)
    else:
        ap.add_argument(flag, type=kind, default=default, help=text)
    return True


@reports_errors("facerec preprocess")
def preprocess_main(argv=None) -> int:
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


@reports_errors("facerec data synth")
def synth_main(argv=None) -> int:
    from facerec.data.synth import default_synthetic_dir, generate_synthetic

    ap = argparse.ArgumentParser(prog="facerec data synth",
                                 description="Generate the embedded synthetic dataset in the CelebA layout.")
    ap.add_argument("--out", help="folder (default: $FACEREC_CACHE/synthetic-v1, FACEREC_CACHE defaulting to "
                                  "~/.cache/facerec)")
    ap.add_argument("--identities", type=int, default=None, help="number of identities")
    ap.add_argument("--images-per-identity", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    kwargs = {"seed": args.seed}
    if args.identities is not None:
        kwargs["n_identities"] = args.identities
    if args.images_per_identity is not None:
        kwargs["images_per_identity"] = args.images_per_identity
    root = generate_synthetic(args.out or default_synthetic_dir(), **kwargs)
    print(f"synthetic dataset: {root}")
    return 0
