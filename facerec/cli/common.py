"""What every command shares: reporting facerec's errors as one line, the option types and the
option groups (the photo folder's layout, the face detector and its gate, the embedding options).
Checks of the folders a command is given live in the library (:mod:`facerec.data.sources`,
:func:`facerec.models.pretrained.parse_checkpoints`), where ``facerec.run`` uses them too."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, Iterable

from facerec.errors import FacerecError


def reports_errors(prog: str) -> Callable:
    """Decorator of a subcommand's ``main(argv)``: facerec's own errors (bad input) become one line
    ``<prog>: error: <message>`` on stderr and exit code 2, like argparse's."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv=None) -> int:
            try:
                return main(argv)
            except FacerecError as e:
                print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
                return 2

        return run

    return wrap


def comma_list(cast: Callable = str, choices: Iterable[str] | None = None) -> Callable[[str], list]:
    """An argparse ``type`` for ``a,b,c``: each item cast (and checked against ``choices``); a bad
    item is an argparse error that names it."""
    allowed = sorted(choices) if choices is not None else None

    def parse(text: str) -> list:
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r} is an empty list")
        out = []
        for item in items:
            if allowed is not None and item not in allowed:
                raise argparse.ArgumentTypeError(f"invalid choice {item!r} (choose from {', '.join(allowed)})")
            try:
                out.append(cast(item))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not a valid {cast.__name__}") from None
        return out

    parse.__name__ = "comma list"  # argparse names the type in some messages
    return parse


def add_layout_argument(ap: argparse.ArgumentParser) -> None:
    """``--layout``: how a ``--data`` photo folder is read (:mod:`facerec.data.layouts`)."""
    from facerec.data.layouts import LAYOUTS

    ap.add_argument("--layout", choices=LAYOUTS.names(), default=None,
                    help="how --data is laid out: celeba (identity_CelebA.txt + img_align_celeba/), folder_per_person "
                         "(DATA/<person>/*.jpg) or unlabelled (photos in any folders, nobody named) "
                         "(default: detected from the folder)")


def add_embedding_arguments(ap: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--num-actors``, ``--gpu/--no-gpu``: how the crops are embedded on Ray
    Data (build-index, evaluate, calibrate), the fields of
    :class:`facerec.gallery.embed.EmbeddingOptions`; :func:`embedding_fields` reads them back."""
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-actors", type=int)
    gpu = ap.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="use_gpu", action="store_const", const=True)
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_const", const=False)


def embedding_fields(args: argparse.Namespace) -> dict:
    """The :class:`~facerec.gallery.embed.EmbeddingOptions` fields of parsed arguments, by name."""
    from dataclasses import fields

    from facerec.gallery.embed import EmbeddingOptions

    return {f.name: getattr(args, f.name) for f in fields(EmbeddingOptions)}


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
