"""The ``facerec`` command: one subcommand per stage, each a thin front end over library code
(the same functions the ``pipelines/*.py`` scripts call).

    facerec data synth              generate the embedded synthetic CelebA-layout dataset
    facerec preprocess              photos -> face crops + Parquet table (Ray Data)
    facerec train-sweep             losses x backbones sweep (Ray Tune + Ray Train)
    facerec build-index             embed a gallery (Ray Data actors) and build its index
    facerec evaluate                the study's retrieval tables, verification accuracy
    facerec calibrate               same-person distance thresholds at fixed false accept rates
    facerec cluster                 photos -> people: face clustering on Ray (no labels needed)
    facerec serve                   the Ray Serve HTTP API and web page
    facerec run                     the whole chain end to end (synthetic data by default)
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

from facerec.errors import ConfigError, DataNotFoundError, FacerecError

# subcommand -> "module:function" taking argv and returning an exit code. A table, not an
# if/elif chain, so a stage is added in one line.
COMMANDS: dict[str, tuple[str, str]] = {
    "data synth": ("facerec.data.cli:synth_main", "generate the synthetic CelebA-layout dataset"),
    "preprocess": ("facerec.data.cli:preprocess_main", "crop faces on Ray Data, write crops.parquet"),
    "train-sweep": ("facerec.train.cli:main", "train a losses x backbones sweep on Ray Train/Tune"),
    "build-index": ("facerec.eval.build_index_cli:main", "embed a gallery and build its index"),
    "evaluate": ("facerec.eval.evaluate_cli:main", "reproduce the study's tables"),
    "calibrate": ("facerec.eval.calibrate_cli:main", "verification thresholds at fixed false accept rates"),
    "cluster": ("facerec.cluster.cli:main", "cluster the faces of a photo folder into people on Ray"),
    "serve": ("facerec.serve.cli:main", "start the Ray Serve HTTP API and web page"),
    "run": ("facerec.run:main", "the whole chain end to end"),
}


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


def check_source(data: str | os.PathLike, flag: str = "--data", layout: str | None = None,
                 labelled_for: str | None = None) -> None:
    """``data`` is a preprocessed folder (crops.parquet) or a photo folder whose layout
    (:mod:`facerec.data.layouts`; ``layout`` or detected) is known -- and labelled when
    ``labelled_for`` names a stage that needs people; checked before Ray starts or anything is
    written."""
    from facerec.data.layouts import require_labelled, resolve_layout
    from facerec.data.schema import CROPS_TABLE

    root = Path(data)
    if not root.is_dir():
        raise DataNotFoundError(f"{flag} {data}: no such folder")
    if (root / CROPS_TABLE).is_file():
        check_crops(root, flag, labelled_for)
    elif labelled_for:
        require_labelled(root, layout, labelled_for, flag)
    else:
        resolve_layout(root, layout)  # an ambiguous or photo-less folder fails here


def check_crops(crops: str | os.PathLike, flag: str = "--crops", labelled_for: str | None = None) -> None:
    """``crops`` is a preprocessed folder (``facerec preprocess`` output) of one face per photo
    (every stage that takes ``--crops`` reads one; ``facerec cluster`` makes its own); made from
    a labelled photo folder when ``labelled_for`` names a stage that needs people."""
    from facerec.data.schema import CROPS_TABLE, require_one_face_per_photo
    from facerec.io import read_parquet_metadata

    if not (Path(crops) / CROPS_TABLE).is_file():
        raise DataNotFoundError(f"{flag} {crops}: not a preprocessed folder (no {CROPS_TABLE}); "
                                f"run `facerec preprocess --data PHOTOS --out {crops}` first")
    try:
        meta = read_parquet_metadata(Path(crops) / CROPS_TABLE)
    except Exception:  # a damaged table: the stage's own reading reports it, naming the file
        return
    require_one_face_per_photo(meta, f"{flag} {crops}")
    if not labelled_for:
        return
    labelled = meta.get("labelled")
    if labelled is False:
        raise ConfigError(flag, str(crops), f"crops of a labelled photo folder for {labelled_for} (these were made from "
                                            "an unlabelled folder, whose photos name nobody)")


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    """``["NAME=DIR", "DIR", "dlib_resnet", ...]`` -> {name: dir}, each checked to be a checkpoint
    folder or pretrained model name; a bare DIR is named after its backbone, a bare pretrained
    model name (``facerec.models.pretrained.PRETRAINED``) after itself."""
    from facerec.models import read_checkpoint_metadata
    from facerec.models.pretrained import PRETRAINED, check_checkpoint

    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep and item in PRETRAINED:
            name, path = item, item
        elif not sep:
            path, name = item, read_checkpoint_metadata(item)["backbone"]
        if not name or not path:
            raise ConfigError("--checkpoint", item, "NAME=CHECKPOINT_DIR (or just CHECKPOINT_DIR)")
        if name in out:
            raise ConfigError("--checkpoint", item, f"each model name once ({name!r} appears twice)")
        check_checkpoint(path)
        out[name] = path
    return out


def _usage() -> str:
    width = max(len(k) for k in COMMANDS)
    lines = [f"  facerec {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: facerec COMMAND [options]   (facerec COMMAND --help for its options)\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    for words in (2, 1):
        name = " ".join(argv[:words])
        if name in COMMANDS:
            target = COMMANDS[name][0]
            module, func = target.split(":")
            return int(getattr(importlib.import_module(module), func)(argv[words:]) or 0)
    print(f"facerec: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
