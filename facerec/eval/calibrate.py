"""``facerec calibrate`` end to end: a model's genuine and impostor distances on LFW folds or on the
identity-disjoint validation split of a crops folder -> cross-validated operating points
(:mod:`facerec.eval.calibration`) -> stored beside the checkpoint
(:mod:`facerec.models.calibration`) with a ROC PNG and Markdown/CSV tables.

Pairs
-----
* LFW (``--lfw``): the genuine pairs are the matched pairs of ``pairs.txt`` (the protocol's); the
  impostor pairs are *every* pair of images of different people inside a fold -- the file's 300
  mismatched pairs per fold cannot resolve a FAR of 1e-3, every pair of a fold's ~800 images can.
  Pairs never cross folds, and the folds must be identity-disjoint (LFW View 2's are; checked and
  recorded as ``folds_identity_disjoint``), so a threshold fitted on other folds was fitted on other
  people. Held-out accuracy is the LFW protocol's, on the file's pairs
  (:func:`facerec.eval.verification.kfold_verification_accuracy`).
* Crops (``--crops``): the validation split of :func:`facerec.data.splits.assign_splits` (the split
  recorded in the checkpoint, else the default), its identities dealt into ``folds`` folds; every
  pair inside a fold is genuine or impostor by identity. Held-out accuracy uses each fold's genuine
  pairs and as many seeded impostor pairs.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from facerec.detect import crops_detector
from facerec.errors import ConfigError, DataNotFoundError
from facerec.eval.calibration import (DEFAULT_FAR, DEFAULT_FARS, MIN_FALSE_ACCEPTS, FoldedDistances, cross_validate,
                                      identity_folds, pair_distances, pairs_within_folds, roc_curve)
from facerec.eval.openset_cv import DEFAULT_FPIRS
from facerec.gallery.embed import EmbeddingOptions
from facerec.gallery.openset import check_target

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef

SOURCES = ("lfw", "crops")


@dataclass
class CalibrateConfig(EmbeddingOptions):
    """Validated settings of a calibration (checked before Ray or any data is touched)."""

    fars: tuple[float, ...] = DEFAULT_FARS
    default_far: float = DEFAULT_FAR
    min_false_accepts: int = MIN_FALSE_ACCEPTS
    folds: int = 3                      # crops only: identity folds of the validation split
    max_pairs_per_fold: int | None = 2_000_000
    seed: int = 0
    split_args: dict | None = None      # crops only: assign_splits arguments (default: the checkpoint's)
    detector: dict | None = None        # lfw only: DetectorConfig settings (None: the default detector)
    open_set_fpirs: tuple[float, ...] = DEFAULT_FPIRS  # the open-set report's FPIR targets

    def __post_init__(self) -> None:
        super().__post_init__()  # the embedding options: batch_size, num_actors, use_gpu
        self.fars = tuple(float(f) for f in self.fars)
        if not self.fars or any(not 0 < f < 1 for f in self.fars):
            raise ConfigError("fars", self.fars, "false accept rates in (0, 1), e.g. 0.1,0.01,0.001")
        if len(set(self.fars)) != len(self.fars):
            raise ConfigError("fars", self.fars, "distinct values")
        if isinstance(self.open_set_fpirs, (str, bytes)) or not hasattr(self.open_set_fpirs, "__iter__"):
            raise ConfigError("open_set_fpirs", self.open_set_fpirs, "a list of FPIR targets, e.g. 0.1,0.01,0.001")
        self.open_set_fpirs = tuple(check_target(f, "open_set_fpirs") for f in self.open_set_fpirs)
        if not self.open_set_fpirs or len(set(self.open_set_fpirs)) != len(self.open_set_fpirs):
            raise ConfigError("open_set_fpirs", self.open_set_fpirs, "one or more distinct FPIR targets in (0, 1)")
        if float(self.default_far) not in self.fars:
            raise ConfigError("default_far", self.default_far, f"one of fars {list(self.fars)}")
        for name, low in (("min_false_accepts", 1), ("folds", 2)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(name, v, f"an integer >= {low}")
        if self.max_pairs_per_fold is not None and (not isinstance(self.max_pairs_per_fold, int) or self.max_pairs_per_fold < 100):
            raise ConfigError("max_pairs_per_fold", self.max_pairs_per_fold, "None or an integer >= 100")
        from facerec.detect import DetectorConfig

        if self.detector is None:
            self.detector = DetectorConfig().settings()
        elif not isinstance(self.detector, dict) or "detector" not in self.detector:
            raise ConfigError("detector", self.detector, "None or the settings of a facerec.detect.DetectorConfig")


def _model_meta(model: "str | os.PathLike | ModelRef") -> "tuple[ModelRef, dict]":
    """The model's reference (resolved once; ``str()`` of it is its folder) and its metadata."""
    from facerec.models.reference import resolve_model

    ref = resolve_model(model)
    return ref, ref.metadata


def check_crops_source(crops_dir: str | os.PathLike, model: "str | os.PathLike | ModelRef") -> None:
    """Refuse crops of another input kind (or size) than the model's, before anything runs."""
    from facerec.data.inputs import check_inputs_match
    from facerec.data.schema import CROPS_TABLE
    from facerec.io import read_parquet_metadata
    from facerec.models.pretrained import PRETRAINED
    from facerec.models.reference import resolve_model

    table = Path(crops_dir) / CROPS_TABLE
    if isinstance(model, str) and model in PRETRAINED:  # its registry entry: nothing built yet
        entry = PRETRAINED.get(model)
        meta = {"input_kind": entry.input_kind, "image_size": entry.image_size}
    else:
        meta = resolve_model(model).metadata
    try:
        crops_meta = read_parquet_metadata(table)
    except Exception as exc:
        raise DataNotFoundError(f"--crops {crops_dir}: {table} is not a readable Parquet table ({type(exc).__name__}); "
                                f"run `facerec preprocess` again") from None
    check_inputs_match(meta, crops_meta, f"--crops {crops_dir}", str(model))


def lfw_distances(lfw_root: str | os.PathLike, model: str | os.PathLike, config: CalibrateConfig,
                  pairs_path: str | os.PathLike | None = None, crop_dir: str | os.PathLike | None = None
                  ) -> tuple[FoldedDistances, dict[str, Any]]:
    """LFW genuine/impostor distances by fold and the provenance of the data (see module docstring)."""
    from facerec.data.inputs import kind_of
    from facerec.eval.lfw import LFWCropConfig, lfw_embeddings, read_lfw_pairs
    from facerec.eval.verification import kfold_verification_accuracy
    from facerec.io import sha256_file

    root = Path(lfw_root)
    pairs_file = Path(pairs_path) if pairs_path else root / "pairs.txt"
    pairs = read_lfw_pairs(root, pairs_file)
    folder, meta = _model_meta(model)
    kind = folder.input_kind
    crop_cfg = LFWCropConfig(input_kind=kind.name, crop_size=int(meta.get("image_size")) if kind.fixed_size else None,
                             detector=config.detector)
    crops, emb, stats = lfw_embeddings(root, folder, pairs, crop_dir, crop_cfg, config.batch_size, config.num_actors,
                                       config.use_gpu)
    pos = {img: i for i, img in enumerate(crops["image"])}
    person = {img: img.split("/")[-2] for img in crops["image"]}
    # The images of each fold (an image named by two folds is in both lists).
    rows = []
    for f, sub in pairs.groupby("fold", sort=True):
        for img in dict.fromkeys(sub["path1"].tolist() + sub["path2"].tolist()):
            rows.append((pos[img], person[img], int(f)))
    table = pd.DataFrame(rows, columns=["emb_row", "person", "fold"])
    people = table.groupby("fold")["person"].apply(set)
    shared = sorted({p for a in people.index for b in people.index if a < b for p in people[a] & people[b]})
    _, _, imp_pairs, imp_fold = pairs_within_folds(table["person"].to_numpy(), table["fold"].to_numpy(),
                                                   config.max_pairs_per_fold, config.seed)
    emb_rows = table["emb_row"].to_numpy()
    impostor = pair_distances(emb, emb_rows[imp_pairs])
    matched = pairs[pairs["same"]]
    g_pairs = np.stack([matched["path1"].map(pos).to_numpy(), matched["path2"].map(pos).to_numpy()], 1)
    genuine = pair_distances(emb, g_pairs)
    all_pairs = np.stack([pairs["path1"].map(pos).to_numpy(), pairs["path2"].map(pos).to_numpy()], 1)
    scores = -pair_distances(emb, all_pairs)
    acc_mean, acc_std, _ = kfold_verification_accuracy(scores, pairs["same"].to_numpy(), pairs["fold"].to_numpy())
    crop_methods = crops["method"].value_counts().to_dict()
    official_mismatched = int((~pairs["same"]).sum())
    data = {
        "source": "lfw", "name": root.name, "path": str(root.resolve()), "pairs_file": str(pairs_file.resolve()),
        "fingerprint": sha256_file(pairs_file)[:16], "data_version": f"lfw-pairs:{sha256_file(pairs_file)[:12]}",
        "crop_fingerprint": crop_cfg.fingerprint(), "images": int(len(crops)), "detector": crop_cfg.detector,
        "folds": int(pairs["fold"].nunique()), "folds_identity_disjoint": not shared,
        "people_in_several_folds": shared[:10], "centre_fallback": int(crop_methods.get("centre", 0)),
        "genuine_pairs": "the matched pairs of the pairs file",
        "impostor_pairs": f"every pair of images of different people inside a fold (includes the file's "
                          f"{official_mismatched} mismatched pairs)",
        "impostor_official": official_mismatched, "impostor_generated": int(len(impostor) - official_mismatched),
    }
    accuracy = {"mean": acc_mean, "std": acc_std, "protocol": "LFW View 2 on the file's pairs: threshold maximising "
                "accuracy on the other folds"}
    # Open-set searches: each image once (in the first fold that names it), labelled by its person.
    once = table.drop_duplicates("emb_row")
    open_set_data = {"embeddings": emb[once["emb_row"].to_numpy()], "identities": once["person"].to_numpy(),
                     "folds": once["fold"].to_numpy()}
    return FoldedDistances(genuine, matched["fold"].to_numpy(), impostor, imp_fold), {"data": data, "accuracy": accuracy,
                                                                              "embed": stats, "checkpoint": folder,
                                                                              "meta": meta, "open_set_data": open_set_data}


def crops_distances(crops_dir: str | os.PathLike, model: str | os.PathLike, config: CalibrateConfig
                    ) -> tuple[FoldedDistances, dict[str, Any]]:
    """Validation-split genuine/impostor distances by identity fold (see module docstring)."""
    from facerec.data.schema import CROPS_TABLE, load_crops
    from facerec.data.splits import assign_splits
    from facerec.data.splits import check_data_version, resolve_split_args
    from facerec.gallery.embed import embed_crops_with_stats
    from facerec.eval.verification import kfold_verification_accuracy
    from facerec.io import read_parquet_metadata

    root = Path(crops_dir)
    check_crops_source(root, model)
    folder, meta = _model_meta(model)
    crops_meta = read_parquet_metadata(root / CROPS_TABLE)
    check_data_version(meta, crops_meta, folder)  # a trained model's validation people must be held out
    split_args = resolve_split_args([meta], config.split_args)
    df = assign_splits(load_crops(root)[0], **split_args)  # refuses several faces per photo: labels are per photo
    val = df[df["split"] == "val"].reset_index(drop=True)
    if val["identity"].nunique() < config.folds:
        raise ConfigError("split", split_args, f"a validation split of at least {config.folds} identities (it has "
                          f"{val['identity'].nunique()} of {len(val)} images); pass more data or fewer folds")
    fold = identity_folds(val["identity"].to_numpy(), config.folds, config.seed)
    emb, stats = embed_crops_with_stats(val, root, folder, config.embed_config())
    g_pairs, g_fold, i_pairs, i_fold = pairs_within_folds(val["identity"].to_numpy(), fold, config.max_pairs_per_fold,
                                                          config.seed)
    genuine, impostor = pair_distances(emb, g_pairs), pair_distances(emb, i_pairs)
    # Balanced pairs for an accuracy comparable to LFW's: each fold's genuine pairs and as many impostors.
    rng = np.random.default_rng(config.seed)
    keep = np.concatenate([rng.choice(np.flatnonzero(i_fold == f), size=min(int((g_fold == f).sum()), int((i_fold == f).sum())),
                                      replace=False) for f in np.unique(g_fold)])
    scores = -np.concatenate([genuine, impostor[keep]])
    same = np.concatenate([np.ones(genuine.size, bool), np.zeros(keep.size, bool)])
    acc_mean, acc_std, _ = kfold_verification_accuracy(scores, same, np.concatenate([g_fold, i_fold[keep]]))
    data = {
        "source": "crops", "name": root.name, "path": str(root.resolve()),
        "fingerprint": str(crops_meta.get("data_version")), "data_version": crops_meta.get("data_version"),
        "detector": crops_detector(crops_meta), "split": split_args, "split_part": "val", "images": int(len(val)), "identities": int(val["identity"].nunique()),
        "folds": int(config.folds), "folds_identity_disjoint": True,
        "genuine_pairs": "every pair of images of one identity inside a fold",
        "impostor_pairs": "every pair of images of different identities inside a fold",
        "sampled": bool(config.max_pairs_per_fold is not None
                        and any(n * (n - 1) // 2 > config.max_pairs_per_fold for n in np.bincount(fold))),
    }
    accuracy = {"mean": acc_mean, "std": acc_std, "protocol": "each fold's genuine pairs and as many impostor pairs; "
                "threshold maximising accuracy on the other folds"}
    return FoldedDistances(genuine, g_fold, impostor, i_fold), {"data": data, "accuracy": accuracy, "embed": stats,
                                                        "checkpoint": folder, "meta": meta,
                                                        "open_set_data": {"embeddings": emb,
                                                                          "identities": val["identity"].to_numpy(),
                                                                          "folds": fold}}


def provenance(command: str | None = None) -> dict[str, Any]:
    """What made a calibration: facerec's version, the commit of its checkout (None when installed
    from a wheel) and whether its tracked files had changes, and the command when known."""
    import subprocess

    from facerec import __version__

    here = Path(__file__).resolve().parents[1]
    commit, dirty = None, None
    try:
        git = ["git", "-C", str(here)]
        commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip() or None
        dirty = bool(subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "--", "."],
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"facerec_version": __version__, "commit": commit, "dirty": dirty, "command": command}


def open_set_section(dist: FoldedDistances, info: dict[str, Any], config: CalibrateConfig) -> dict[str, Any] | None:
    """The open-set (1:N) figures of the calibration's faces (:mod:`facerec.eval.openset_cv`), each
    held-out fold's gallery threshold falling back on the impostor curve of the other folds' pairs."""
    from facerec.eval.openset_cv import cross_validated_open_set
    from facerec.gallery.openset import impostor_curve

    data = info.get("open_set_data")
    if data is None:
        return None

    def impostors_of(fold):
        rest = dist.impostor[dist.impostor_fold != fold]
        return impostor_curve(rest) if rest.size else None

    return cross_validated_open_set(data["embeddings"], data["identities"], data["folds"], config.open_set_fpirs,
                                    impostors_of=impostors_of, seed=config.seed)


def build_calibration(dist: FoldedDistances, info: dict[str, Any], config: CalibrateConfig) -> tuple[dict, pd.DataFrame]:
    """The stored calibration (JSON-able) and the per-fold table."""
    from facerec.data.inputs import kind_of
    from facerec.gallery.openset import impostor_curve

    cv = cross_validate(dist, config.fars, config.min_false_accepts)
    meta = info["meta"]
    per_fold_counts = {str(f): {"genuine": int((dist.genuine_fold == f).sum()), "impostor": int((dist.impostor_fold == f).sum())}
                       for f in dist.folds}
    cal = {
        "format": 1,
        "model_id": meta["model_id"], "backbone": meta.get("backbone"), "input_kind": kind_of(meta).name,
        "image_size": int(meta.get("image_size") or kind_of(meta).default_size),
        "metric": "euclidean", "rule": "same person iff distance <= threshold",
        "default_far": float(config.default_far), "min_false_accepts": int(config.min_false_accepts),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "data": info["data"],
        "pairs": {"genuine": int(dist.genuine.size), "impostor": int(dist.impostor.size),
                  "total": int(dist.genuine.size + dist.impostor.size), "per_fold": per_fold_counts},
        "operating_points": cv["operating_points"],
        "eer": cv["eer"],
        "accuracy": info["accuracy"],
        "protocol": "thresholds fitted on the other folds, scored on the held-out fold; mean and sample std over "
                    "held-out folds; pooled = all held-out decisions together; served thresholds fitted on all folds",
        "config": {k: v for k, v in asdict(config).items() if k not in ("batch_size", "num_actors", "use_gpu")},
        # Every fold's impostor pairs together: a gallery's fallback threshold for N faces reads it
        # (facerec.gallery.openset.threshold_from_impostors).
        "impostors": impostor_curve(dist.impostor, pairs=int(dist.impostor.size)),
        "open_set": open_set_section(dist, info, config),
        "provenance": provenance(info.get("command")),
    }
    return cal, cv["per_fold"]


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def summary_table(cal: dict[str, Any]) -> pd.DataFrame:
    """One row per operating point (each FAR, then the EER)."""
    rows = []
    for p in cal["operating_points"]:
        rows.append({"point": f"FAR={p['far']:g}", "far_target": p["far"], "resolvable": p["resolvable"],
                     "threshold": p.get("threshold"), "tar_mean": p.get("tar_mean"), "tar_std": p.get("tar_std"),
                     "far_mean": p.get("far_mean"), "far_std": p.get("far_std"), "tar_pooled": p.get("tar_pooled"),
                     "far_pooled": p.get("far_pooled"), "threshold_cv_mean": p.get("threshold_cv_mean"),
                     "threshold_cv_std": p.get("threshold_cv_std"), "note": p.get("note") or ""})
    e = cal["eer"]
    rows.append({"point": "EER", "far_target": None, "resolvable": True, "threshold": e["threshold"],
                 "tar_mean": 1 - e["heldout_frr_mean"], "tar_std": None, "far_mean": e["heldout_far_mean"], "far_std": None,
                 "tar_pooled": None, "far_pooled": None, "threshold_cv_mean": None, "threshold_cv_std": None,
                 "note": f"EER {e['mean']:.4f} +- {e['std']:.4f} over held-out folds, {e['pooled']:.4f} pooled"})
    return pd.DataFrame(rows)


def markdown(cal: dict[str, Any]) -> str:
    d, pairs = cal["data"], cal["pairs"]
    lines = [
        f"# Verification calibration: {cal.get('backbone')} (model_id {cal['model_id']})", "",
        f"Data: {d['source']} `{d['name']}` ({d.get('data_version')}), {d['folds']} folds, "
        f"identity-disjoint: {d.get('folds_identity_disjoint')}; {pairs['genuine']:,} genuine and "
        f"{pairs['impostor']:,} impostor pairs. Measured {cal['date']}. Input kind {cal['input_kind']}.",
        f"Genuine pairs: {d['genuine_pairs']}. Impostor pairs: {d['impostor_pairs']}.", "",
        f"Rule: {cal['rule']} (Euclidean distance of the embeddings). {cal['protocol'].capitalize()}.", "",
        "| operating point | threshold (all folds) | TAR held-out (mean ± std) | FAR held-out (mean ± std) "
        "| TAR pooled | FAR pooled |",
        "|---|---|---|---|---|---|",
    ]
    for p in cal["operating_points"]:
        if p["resolvable"]:
            lines.append(f"| FAR = {p['far']:g} | {p['threshold']:.4f} | {p['tar_mean']:.4f} ± {p['tar_std']:.4f} "
                         f"| {p['far_mean']:.5f} ± {p['far_std']:.5f} | {p['tar_pooled']:.4f} | {p['far_pooled']:.5f} |")
        else:
            lines.append(f"| FAR = {p['far']:g} | {p['note']} | – | – | – | – |")
    e = cal["eer"]
    lines.append(f"| EER = {e['mean']:.4f} ± {e['std']:.4f} (pooled {e['pooled']:.4f}) | {e['threshold']:.4f} "
                 f"| {1 - e['heldout_frr_mean']:.4f} | {e['heldout_far_mean']:.5f} | – | – |")
    acc = cal["accuracy"]
    lines += ["", f"Held-out accuracy: {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} % ({acc['protocol']}).",
              f"Default FAR of the server: {cal['default_far']:g}."]
    lines += open_set_markdown(cal.get("open_set"))
    return "\n".join(lines) + "\n"


def open_set_table(cal: dict[str, Any]) -> pd.DataFrame:
    """One row per (gallery, FPIR target) of the open-set report (empty without one)."""
    from facerec.eval.openset_cv import rows

    return pd.DataFrame(rows(cal.get("open_set") or {}), columns=[
        "gallery", "gallery_size", "identities", "fpir_target", "threshold", "threshold_std", "method", "fpir", "fnir",
        "nonmated_searches", "mated_searches", "resolvable"])


def open_set_markdown(open_set: dict[str, Any] | None) -> list[str]:
    if not open_set or not open_set.get("galleries"):
        return []
    from facerec.gallery.openset import MIN_EVENTS

    lines = ["", "## Open-set identification (1:N searches)", "",
             f"FPIR: share of searches by someone not in the gallery that return any face at distance <= the "
             f"threshold; FNIR: share of searches by someone in it whose rank-1 face is not theirs at distance <= "
             f"the threshold (NIST FRVT terms), at gallery size N. {open_set['protocol'][:1].upper()}"
             f"{open_set['protocol'][1:]}. A target "
             f"needs {MIN_EVENTS} / FPIR non-mated searches to be resolved.", "",
             "| gallery | N (faces) | identities | FPIR target | threshold (mean over folds) | chosen by "
             "| FPIR held-out | FNIR | non-mated / mated searches |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in open_set["galleries"]:
        for p in g["points"]:
            how = "/".join(sorted(set(p["methods"]))) or "–"
            fpir = _fmt(p["fpir"]) + ("" if p["resolvable"] else " (not resolvable)")
            lines.append(f"| {g['gallery']} | {g['gallery_size']:,} | {g['identities']:,} | {p['fpir_target']:g} "
                         f"| {_fmt(p['threshold'])} | {how} | {fpir} | {_fmt(p['fnir'])} "
                         f"| {p['nonmated_searches']:,} / {p['mated_searches']:,} |")
    return lines


def open_set_line(open_set: dict[str, Any] | None) -> str | None:
    """The CLI summary's open-set line: FNIR at each FPIR target per gallery size."""
    if not open_set or not open_set.get("galleries"):
        return None
    parts = []
    for g in open_set["galleries"]:
        pts = ", ".join(f"FNIR {_fmt(p['fnir'])} at FPIR {p['fpir_target']:g} (held-out {_fmt(p['fpir'])}"
                        f"{'' if p['resolvable'] else ', not resolvable'})" for p in g["points"])
        parts.append(f"N={g['gallery_size']:,} ({g['gallery']}): {pts}")
    return "calibrate: open set, cross-validated by identity: " + "; ".join(parts)


def det_png(cal: dict[str, Any], target: str | os.PathLike) -> Path | None:
    """The open-set DET plot: FNIR against FPIR (log axes), one curve per gallery size, with the
    cross-validated points at each FPIR target. None without an open-set report."""
    open_set = cal.get("open_set")
    if not open_set or not open_set.get("galleries"):
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    floor = 1.0
    for g in open_set["galleries"]:
        fpir = np.asarray(g["det"]["fpir"], dtype=np.float64)
        fnir = np.asarray(g["det"]["fnir"], dtype=np.float64)
        n = max(1, max((p["nonmated_searches"] for p in g["points"]), default=1))
        low = 0.5 / n  # a rate of 0 drawn at half the smallest step, not at -inf
        floor = min(floor, low)
        line, = ax.plot(np.maximum(fpir, low), np.maximum(fnir, low), lw=1.5,
                        label=f"{g['gallery']}: N = {g['gallery_size']:,} faces, {g['identities']:,} people")
        pts = [p for p in g["points"] if p["fpir"] is not None and p["fnir"] is not None]
        ax.plot([max(p["fpir"], low) for p in pts], [max(p["fnir"], low) for p in pts], "o", color=line.get_color(),
                mfc="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_xlabel("FPIR (searches by people not in the gallery that return a match)")
    ax.set_ylabel("FNIR (searches by people in it whose rank 1 is not theirs)")
    ax.set_title(f"{cal.get('backbone')} on {cal['data']['name']}: open-set DET (circles: held-out)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save_png(fig, target)


def _save_png(fig, target: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG, atomically."""
    import io

    from facerec.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(target, buf.getvalue())
    return Path(target)


def roc_png(dist: FoldedDistances, cal: dict[str, Any], target: str | os.PathLike) -> Path:
    """The pooled ROC (TAR against FAR, log FAR axis) with the served operating points."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    _, far, tar = roc_curve(dist.genuine, dist.impostor)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    floor = 0.5 / dist.impostor.size  # FAR 0 drawn at half the smallest step, not at -inf
    ax.plot(np.maximum(far, floor), tar, lw=1.5, label=f"ROC ({dist.genuine.size:,} genuine, {dist.impostor.size:,} impostor pairs)")
    for p in cal["operating_points"]:
        if p["resolvable"]:
            ax.errorbar([p["far_mean"]], [p["tar_mean"]], yerr=[p["tar_std"]], fmt="o", capsize=3,
                        label=f"FAR {p['far']:g}: TAR {p['tar_mean']:.3f} (held out), t={p['threshold']:.3f}")
    e = cal["eer"]
    ax.plot([e["pooled"]], [1 - e["pooled"]], "kx", label=f"EER {e['pooled']:.3f}")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    low = min(cal["config"]["fars"]) / 10  # the curve a decade below the smallest FAR reported
    ax.set_ylim(max(0.0, float(np.min(tar[far >= low])) - 0.02) if (far >= low).any() else 0.0, 1.005)
    ax.set_xlabel("false accept rate (impostor pairs accepted)")
    ax.set_ylabel("true accept rate (genuine pairs accepted)")
    ax.set_title(f"{cal.get('backbone')} on {cal['data']['name']} ({cal['data']['source']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save_png(fig, target)


def write_reports(dist: FoldedDistances, cal: dict[str, Any], per_fold: pd.DataFrame, folder: str | os.PathLike) -> dict[str, str]:
    """roc.png, calibration.md, calibration.csv (summary) and calibration_folds.csv in ``folder``."""
    from facerec.io import atomic_write_text

    out = Path(folder)
    files = {"roc_png": out / "roc.png", "table_md": out / "calibration.md", "table_csv": out / "calibration.csv",
             "folds_csv": out / "calibration_folds.csv"}
    roc_png(dist, cal, files["roc_png"])
    if cal.get("open_set"):
        files.update(det_png=out / "det.png", open_set_csv=out / "open_set.csv")
        det_png(cal, files["det_png"])
        atomic_write_text(files["open_set_csv"], open_set_table(cal).to_csv(index=False))
    atomic_write_text(files["table_md"], markdown(cal))
    atomic_write_text(files["table_csv"], summary_table(cal).to_csv(index=False))
    atomic_write_text(files["folds_csv"], per_fold.to_csv(index=False))
    return {k: str(v) for k, v in files.items()}


def calibrate(model: str | os.PathLike, source: str, path: str | os.PathLike, config: CalibrateConfig | None = None,
              out_dir: str | os.PathLike | None = None, store: bool = True, pairs_path: str | os.PathLike | None = None,
              crop_dir: str | os.PathLike | None = None, command: str | None = None) -> dict[str, Any]:
    """Calibrate ``model`` (checkpoint folder or pretrained name) on ``source`` ("lfw" or "crops")
    at ``path``; store it beside the checkpoint (``store``) and write the reports into its
    ``calibration/`` folder and ``out_dir``. ``command``: the command line, recorded in the
    calibration's provenance. Returns {"calibration", "per_fold", "files", "stored_in"}."""
    from facerec.models.calibration import FOLDER, store_calibration

    cfg = config or CalibrateConfig()
    if source not in SOURCES:
        raise ConfigError("source", source, f"one of {SOURCES}")
    t0 = time.perf_counter()
    if source == "lfw":
        dist, info = lfw_distances(path, model, cfg, pairs_path=pairs_path, crop_dir=crop_dir)
    else:
        dist, info = crops_distances(path, model, cfg)
    info["command"] = command
    cal, per_fold = build_calibration(dist, info, cfg)
    default = next(p for p in cal["operating_points"] if p["far"] == cfg.default_far)
    files: dict[str, str] = {}
    stored_in: list[str] = []
    if store and not default["resolvable"]:
        if out_dir is not None:
            write_reports(dist, cal, per_fold, out_dir)
        usable = [p["far"] for p in cal["operating_points"] if p["resolvable"]]
        raise ConfigError("default_far", cfg.default_far,
                          f"a resolvable FAR to decide with ({default['note']}); nothing was stored"
                          + (f" (reports in {out_dir})" if out_dir is not None else "")
                          + (f"; pass --default-far one of {usable}" if usable else "; calibrate on more data"))
    if store:
        cal["files"] = {k: f"{FOLDER}/{Path(v).name}" for k, v in
                        write_reports(dist, cal, per_fold, Path(info["checkpoint"]) / FOLDER).items()}
        stored_in = store_calibration(info["checkpoint"], cal)
        for other in stored_in[1:]:  # the cached pretrained copy gets the same figures
            write_reports(dist, cal, per_fold, Path(other) / FOLDER)
        files.update({k: str(Path(info["checkpoint"]) / v) for k, v in cal["files"].items()})
    if out_dir is not None:
        from facerec.io import atomic_write_json

        files = write_reports(dist, cal, per_fold, out_dir)
        atomic_write_json(Path(out_dir) / "calibration.json", cal)
        files["json"] = str(Path(out_dir) / "calibration.json")
    pts = ", ".join(f"TAR@FAR{p['far']:g} {p['tar_mean']:.4f}+-{p['tar_std']:.4f} (t={p['threshold']:.4f})"
                    if p["resolvable"] else f"FAR{p['far']:g} {p['note']}" for p in cal["operating_points"])
    if not cal["data"].get("folds_identity_disjoint", True):
        print(f"calibrate: warning: people in several folds ({', '.join(cal['data']['people_in_several_folds'])}, ...): "
              f"held-out figures are optimistic", flush=True)
    print(f"calibrate: {cal['backbone']} on {cal['data']['name']} ({source}): {cal['pairs']['genuine']:,} genuine / "
          f"{cal['pairs']['impostor']:,} impostor pairs in {len(dist.folds)} folds; {pts}; EER {cal['eer']['mean']:.4f}"
          f"+-{cal['eer']['std']:.4f}; accuracy {100 * cal['accuracy']['mean']:.2f}+-{100 * cal['accuracy']['std']:.2f} % "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if open_set_line(cal.get("open_set")):
        print(open_set_line(cal.get("open_set")), flush=True)
    return {"calibration": cal, "per_fold": per_fold, "files": files, "stored_in": stored_in, "distances": dist}
