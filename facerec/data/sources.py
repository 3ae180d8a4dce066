"""What a stage is given to read: a preprocessed folder (``crops.parquet`` + ``crops/``, the
output of ``facerec preprocess``) or a photo folder of a known layout (:mod:`facerec.data.layouts`),
labelled where the stage needs people. Checked before Ray starts or anything is written, by the
commands and by :func:`facerec.run.plan_run`."""

from __future__ import annotations

import os
from pathlib import Path

from facerec.data.schema import CROPS_TABLE
from facerec.errors import ConfigError, DataNotFoundError


def check_source(data: str | os.PathLike, flag: str = "--data", layout: str | None = None,
                 labelled_for: str | None = None) -> None:
    """``data`` is a preprocessed folder (crops.parquet) or a photo folder whose layout
    (:mod:`facerec.data.layouts`; ``layout`` or detected) is known -- and labelled when
    ``labelled_for`` names a stage that needs people."""
    from facerec.data.layouts import require_labelled, resolve_layout

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
    from facerec.data.schema import require_one_face_per_photo
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
