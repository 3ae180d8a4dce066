"""Photos -> face crops + Parquet table + drop manifest, as a Ray Data pipeline.

Each block of listed images goes through one actor of a pool running the project's one face
cropper (:class:`facerec.data.cropper.FaceCropper`, the study's box rule): read -> decode ->
detect (:mod:`facerec.detect`: MTCNN by default, the study's two Haar passes with ``--detector
haar``) -> face gate -> crop -> write. Every finished batch writes
a small part file, so re-running over the same output skips finished work and an interrupted
run resumes where it stopped. The driver then joins the parts with the listing and writes
``crops.parquet``, ``dropped.parquet`` and ``summary.json`` (layout: ``facerec.data.schema``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facerec.data.layouts import IMAGE_SUFFIXES, LAYOUTS, read_photos
from facerec.data.cropper import RESULT_COLUMNS, crop_images
from facerec.data.schema import (ATTRIBUTE_NAMES, CROP_COLUMNS, CROPS_TABLE, DROP_REASONS, DROPPED_TABLE,
                                 SUMMARY_FILE)
from facerec.data.inputs import crop_relpath
from facerec.errors import ConfigError
from facerec.io import atomic_write_bytes, atomic_write_json, atomic_write_parquet

PARTS_DIR = "_parts"


SEVERAL_FACES_RULES = ("largest", "drop", "all")


@dataclass
class PreprocessConfig:
    """Settings of the cropping stage; validated on construction, before any worker starts.

    ``input_kind`` (``facerec.data.inputs.INPUT_KINDS``): what is stored per kept photo -- the
    study's ``haar_crop`` or dlib's ``aligned_chip_5pt`` (the input of ``dlib_resnet``).
    ``crop_size`` None means the kind's size (218 / 150). ``several_faces``: ``"drop"`` (the
    study's rule: a photo with several accepted faces is dropped), ``"largest"`` (keep the
    largest face) or ``"all"`` (keep every accepted face, each its own row and crop, numbered by
    the ``face`` column from 0 = largest: for clustering; the labelled stages refuse such crops,
    :func:`facerec.data.schema.require_one_face_per_photo`). ``detector`` and the fields after it up to ``detect_max_side`` are the face
    detector and its gate (:class:`facerec.detect.DetectorConfig`; None = the detector's default).
    ``layout``: how the photo folder is read (``facerec.data.layouts.LAYOUTS``: ``celeba``,
    ``folder_per_person``, ``unlabelled``; None = detected from the folder).
    """

    input_kind: str = "haar_crop"
    crop_size: int | None = None   # None: the input kind's size (haar_crop 218, the study's; chips 150)
    margin: float = 0.2            # of the face box side, on every side (haar_crop)
    several_faces: str = "largest"  # "largest", "drop" (the study's rule) or "all" (every face: clustering)
    detector: str = "mtcnn"        # facerec.detect.DETECTORS: "mtcnn", or "haar" (the study's)
    min_confidence: float | None = None  # face gate: lowest detector score kept (None: the detector's default)
    min_face: int | None = None    # face gate: smallest face side kept, pixels (None: the detector's default)
    scale_step: float | None = None  # ratio between pyramid scales (None: the detector's default; Haar 1.1)
    min_neighbors: int = 5         # Haar only
    detect_max_side: int = 640
    max_pixels: int = 40_000_000   # decompression-bomb guard
    min_images_per_identity: int = 2
    batch_size: int = 16
    num_workers: int | None = None  # actors; default: every CPU of the cluster
    engine: str = "ray"            # "ray" or "local" (a plain single-process loop)
    layout: str | None = None      # facerec.data.layouts.LAYOUTS; None: detected from the folder
    # Parallelism is one image per core; OpenCV's own threads would oversubscribe the cores.
    # 0 leaves OpenCV's default threading on (only the benchmark's naive baseline wants that).
    opencv_threads: int = 1

    def __post_init__(self):
        from facerec.data.inputs import INPUT_KINDS

        kind = INPUT_KINDS.get(self.input_kind)  # ConfigError listing the kinds
        if self.crop_size is None:
            self.crop_size = kind.default_size
        kind.check_size(self.crop_size)
        self.detector_config()  # ConfigError naming the detector field
        checks = {
            "margin": (0 <= self.margin <= 2, "a fraction in [0, 2], e.g. 0.2"),
            "several_faces": (self.several_faces in SEVERAL_FACES_RULES,
                              "'largest', 'drop' (the study's rule) or 'all' (every face, for clustering)"),
            "max_pixels": (self.max_pixels >= 64 * 64, "at least 4096"),
            "min_images_per_identity": (self.min_images_per_identity >= 1, "an integer >= 1 (2 for retrieval)"),
            "batch_size": (self.batch_size >= 1, "an integer >= 1"),
            "num_workers": (self.num_workers is None or self.num_workers >= 1, "None (all CPUs) or an integer >= 1"),
            "engine": (self.engine in ("ray", "local"), "'ray' or 'local'"),
            "layout": (self.layout is None or self.layout in LAYOUTS,
                       f"None (detected from the folder) or one of {LAYOUTS.names()}"),
            "opencv_threads": (self.opencv_threads >= 0, "an integer >= 0 (0 = OpenCV's default)"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ConfigError(name, getattr(self, name), expected)

    def detector_config(self):
        """The :class:`facerec.detect.DetectorConfig` of these settings."""
        from facerec.detect import DetectorConfig

        return DetectorConfig.of(self)

    SETTINGS = ("input_kind", "crop_size", "margin", "several_faces", "max_pixels")

    def settings(self) -> dict:
        """What decides the stored inputs: the crop settings and the detector's resolved settings."""
        return {**{k: getattr(self, k) for k in self.SETTINGS}, **self.detector_config().settings()}

    def fingerprint(self) -> str:
        """What decides a stored input's bytes; a resumed run must use the same settings."""
        blob = json.dumps(self.settings(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def combine_parts(parts: list[Path]) -> pd.DataFrame:
    """The result rows of the part files ``parts``, a photo's rows taken from the last part that
    holds it (a photo processed twice gives its rows twice). A photo kept with several faces
    (``several_faces="all"``) has one row per face; parts from before the ``face`` column give 0."""
    if not parts:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    rows = pd.concat([pd.read_parquet(p).assign(_part=k) for k, p in enumerate(parts)], ignore_index=True)
    rows["face"] = rows["face"].fillna(0).astype(np.int64) if "face" in rows.columns else 0
    latest = rows["_part"].to_numpy() == rows.groupby("image_id")["_part"].transform("max").to_numpy()
    rows = rows[latest].drop_duplicates(["image_id", "face"], keep="last")
    return rows.drop(columns="_part").reset_index(drop=True)


def _read_parts(out_dir: Path) -> pd.DataFrame:
    return combine_parts(sorted((out_dir / PARTS_DIR).glob("part-*.parquet")))


def _check_resume(out_dir: Path, config: PreprocessConfig, overwrite: bool) -> None:
    parts = out_dir / PARTS_DIR
    marker = parts / "config.json"
    if overwrite:
        for sub in (PARTS_DIR, "crops"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("fingerprint") != config.fingerprint():
            raise ConfigError(
                "out", str(out_dir),
                f"a folder made with the same crop settings: it holds crops made with {old.get('settings')}; "
                "use a new --out, the same settings, or --overwrite",
            )
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"fingerprint": config.fingerprint(), "settings": config.settings()})


def data_version(kept: pd.DataFrame, config: PreprocessConfig) -> str:
    return data_version_of(kept, config.fingerprint())


def data_version_of(kept: pd.DataFrame, fingerprint: str) -> str:
    """The version of a kept table made with crop settings ``fingerprint``: its (image, identity)
    rows (under ``several_faces="all"`` a photo's line repeats once per face, so the faces kept count too)."""
    h = hashlib.sha256(fingerprint.encode())
    h.update("\n".join(f"{a} {b}" for a, b in zip(kept["image_id"], kept["identity"])).encode())
    return h.hexdigest()[:16]


def small_identity_detail(n: int, minimum: int) -> str:
    return f"identity has {n} usable image(s), fewer than {minimum}"


def who_was_kept(summary: dict) -> str:
    """The people part of a preprocess summary line: identities of a labelled folder; faces of an
    unlabelled one, whose photos name nobody ("0 identities" would read as nobody found)."""
    if summary.get("labelled", True):
        return f"{summary['identities']} identities"
    return f"{summary.get('faces', summary['kept'])} faces, unlabelled"


def drop_small_identities(kept: pd.DataFrame, minimum: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A kept table split into the rows of identities with at least ``minimum`` images and the
    drop-manifest rows (reason ``identity_too_small``, one per photo) of the others: what
    preprocess decides, applied again after an erasure left an identity smaller. Images are
    photos: a photo kept with several faces counts once."""
    photos = kept.drop_duplicates("image_id")
    counts = kept["identity"].map(photos["identity"].value_counts())
    small = (counts < minimum).to_numpy()
    first = small & ~kept["image_id"].duplicated().to_numpy()
    dropped = pd.DataFrame({"image_id": kept.loc[first, "image_id"].to_numpy(),
                            "identity": kept.loc[first, "identity"].to_numpy(),
                            "reason": "identity_too_small",
                            "detail": [small_identity_detail(int(n), minimum) for n in counts[first]]})
    return kept[~small].reset_index(drop=True), dropped


def preprocess(data_dir: str | Path, out_dir: str | Path, config: PreprocessConfig | None = None,
               overwrite: bool = False, progress: bool = True, erased=None) -> dict:
    """Crop every listed image of a photo folder read as ``config.layout``
    (:func:`facerec.data.layouts.read_photos`; None: detected); returns (and writes) the summary.

    Invariant: ``kept + sum(dropped.values()) + erased == listed`` where ``listed`` counts the
    lines of ``identity_CelebA.txt``, or the photos of a folder layout; all count photos, and
    ``summary["faces"]`` the faces kept (the rows of ``crops.parquet``: more than ``kept`` only
    under ``several_faces="all"``). Images in a CelebA folder
    but not listed are not processed; their number is ``summary["unlisted"]`` and their names are
    in ``unlisted.txt``. An unlabelled folder's photos all have identity -1 (``labelled: false``
    in the crops table's metadata) and no identity-size rule applies to them.

    ``erased`` (:class:`facerec.data.erasure.Erased`; default: what the erasure list
    ``$FACEREC_CACHE/erased.json`` holds for ``data_dir``): photos and identities a gallery
    delete erased. They are not cropped, and no output names them (only ``summary["erased"]``
    counts their lines); crops and resume parts an earlier run left of them are removed.
    """
    config = config or PreprocessConfig()
    t0 = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    listing = read_photos(data_dir, config.layout)
    found, layout, labelled = listing.attrs["found"], listing.attrs["layout"], listing.attrs["labelled"]
    display_names = {int(k): v for k, v in listing.attrs["display_names"].items()}
    listed_names = set(listing["image_id"])
    n_listed = len(listing)
    image_dir = Path(listing.attrs["image_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(out_dir, config, overwrite)
    if erased is None:
        from facerec.data.erasure import ErasureList

        erased = ErasureList.default().of(data_dir)
    n_erased = 0
    if erased:
        from facerec.data.erasure import scrub_outputs

        gone = erased.mask(listing["image_id"], listing["identity"])
        n_erased = int(gone.sum())
        scrub_outputs(out_dir, set(listing.loc[gone, "image_id"]) | set(erased.images))
        listing = listing[~gone].reset_index(drop=True)

    dup = listing["image_id"].duplicated(keep="first").to_numpy()
    unique_ids = listing.loc[~dup, "image_id"].tolist()
    done = set(_read_parts(out_dir)["image_id"])
    todo = [i for i in unique_ids if i not in done]
    if todo:
        # The rows come back in the part files (the resume record), read below.
        crop_images(todo, image_dir, out_dir, config, parts_dir=out_dir / PARTS_DIR, progress=progress)
    results = _read_parts(out_dir)
    results = results[results["image_id"].isin(set(unique_ids))]

    table = listing.copy()
    table["_row"] = np.arange(len(table))
    # A photo kept with several faces (several_faces="all") matches several result rows: one per face.
    table = table.merge(results, on="image_id", how="left").sort_values(["_row", "face"], kind="stable")
    table = table.reset_index(drop=True)
    if table["status"].isna().any() and (~dup).any():
        missing = table.loc[table["status"].isna() & ~dup[table["_row"]], "image_id"].tolist()
        if missing:
            raise RuntimeError(f"{len(missing)} images were not processed (e.g. {missing[:3]}); re-run to resume")
    table.loc[dup[table["_row"].to_numpy()], ["status", "reason", "detail"]] = ["dropped", "duplicate",
                                                                              "listed again; the first line is kept"]
    kept_mask = table["status"] == "kept"
    counts = table.loc[kept_mask].drop_duplicates("_row")["identity"].value_counts()  # photos, not faces
    small = kept_mask & table["identity"].map(counts).lt(config.min_images_per_identity).fillna(False)
    if not labelled:  # identity -1 is nobody, not one person with many photos
        small[:] = False
    n_small = table.loc[small, "identity"].map(counts)
    table.loc[small, "status"] = "dropped"
    table.loc[small, "reason"] = "identity_too_small"
    table.loc[small, "detail"] = [small_identity_detail(n, config.min_images_per_identity) for n in n_small]

    kept = table[table["status"] == "kept"].copy()
    kept["face"] = kept["face"].astype(np.int16)
    kept["crop_path"] = [crop_relpath(i, f) for i, f in zip(kept["image_id"], kept["face"])]
    for col in ("box_x", "box_y", "box_w", "box_h", "orig_w", "orig_h"):
        kept[col] = kept[col].astype(np.int32)
    kept["haar_pass"] = kept["haar_pass"].astype(np.int8)
    kept["score"] = kept["score"].astype(np.float32)
    extra = [c for c in listing.columns if c.startswith("celeba_")]
    kept = kept[list(CROP_COLUMNS) + list(ATTRIBUTE_NAMES) + extra].reset_index(drop=True)
    dropped = table[table["status"] == "dropped"].drop_duplicates("_row")  # one line per listed photo
    dropped = dropped[["image_id", "identity", "reason", "detail"]].reset_index(drop=True)

    unlisted = sorted(p.name for p in image_dir.iterdir()
                      if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in listed_names) if layout == "celeba" else []
    if unlisted:
        atomic_write_bytes(out_dir / "unlisted.txt", ("\n".join(unlisted) + "\n").encode())
    version = data_version(kept, config)
    meta = {"data_version": version, "input_kind": config.input_kind, "crop_size": config.crop_size,
            "margin": config.margin, "several_faces": config.several_faces,
            "attribute_names": list(ATTRIBUTE_NAMES), "source": str(data_dir.resolve()),
            "has_attributes": bool(found.get("attributes")),
            "has_partition": bool(found.get("partition")), "settings_fingerprint": config.fingerprint(),
            "detector": config.detector_config().settings(), "min_images_per_identity": config.min_images_per_identity,
            "layout": layout, "labelled": bool(labelled),
            # JSON keys are strings; only the people still kept are named
            "display_names": {str(i): display_names[i] for i in sorted(set(kept["identity"]) & set(display_names))}}
    atomic_write_parquet(out_dir / CROPS_TABLE, kept, metadata=meta)
    atomic_write_parquet(out_dir / DROPPED_TABLE, dropped, metadata={"data_version": version})
    reasons = dropped["reason"].value_counts()
    n_kept = int(kept["image_id"].nunique())  # photos; "faces" counts the rows
    summary = {
        "listed": int(n_listed), "kept": n_kept, "faces": int(len(kept)), "erased": n_erased,
        "dropped": {r: int(reasons.get(r, 0)) for r in DROP_REASONS if reasons.get(r, 0)},
        "identities": int(kept["identity"].nunique()) if labelled else 0, "unlisted": len(unlisted),
        "layout": layout, "labelled": bool(labelled), "ignored": len(listing.attrs["ignored"]),
        "empty_people": len(listing.attrs["empty_people"]),
        "kept_fraction": round(n_kept / max(1, n_listed), 4),
        "input_kind": config.input_kind, "crop_size": config.crop_size, "several_faces": config.several_faces,
        "detector": config.detector_config().describe(),
        "haar_pass2": int(((kept["haar_pass"] == 2) & (kept["face"] == 0)).sum()),
        "processed_now": len(todo), "resumed": len(unique_ids) - len(todo),
        "seconds": round(time.perf_counter() - t0, 2), "engine": config.engine,
        "data_version": version, "data": str(data_dir), "out": str(out_dir),
    }
    if summary["kept"] + sum(summary["dropped"].values()) + n_erased != summary["listed"]:
        raise RuntimeError(f"internal error: kept + dropped + erased != listed in {summary}")
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary
