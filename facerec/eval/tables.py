"""The original study's result tables: attribute-based retrieval quality before (Table 3.1)
and after (Table 3.2) fine-tuning, per backbone, beside a random ranking.

Protocol (the study's, made explicit):

1. the preprocessed crops, split identity-disjointly with :func:`facerec.data.splits.assign_splits`
   using the settings recorded by training in the checkpoints (so the test identities were never
   trained on; the checkpoint's ``data_version`` must be the crops folder's);
2. on the test split, :func:`facerec.data.splits.query_gallery`: one seeded query per identity,
   the rest of the test images are the gallery;
3. embed gallery and queries (:mod:`facerec.gallery.embed`, a Ray Data actor pool), build the
   KD-tree index (the study's method; any kind of :data:`facerec.index.INDEXES`) over the gallery
   and search the top max(k) (clipped to the gallery size);
4. for k = 10, 20, 50, 100, 1000 and their mean: top-k attribute accuracy and mean attribute
   distance (:mod:`facerec.metrics.retrieval`), and the mean wall time of one single-query top-k
   search through the index; beside them the same attribute figures for a seeded random
   ranking (the chance level); per model also the gallery embedding time, precision@1 and
   MAP@R (Musgrave et al. 2020) of identity retrieval;
5. a retrieval grid per model (query and ranks 1-9, the study's Figure 3.2), and optionally LFW
   verification accuracy (:mod:`facerec.eval.lfw`).

"Before fine-tuning" uses each backbone's initial weights: ImageNet when the torch hub cache has
them, else a seeded random initialisation; the ``weights`` column says which.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from facerec.errors import ConfigError
from facerec.gallery.embed import EmbeddingOptions
from facerec.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef

TABLES = {"before": "3.1", "after": "3.2"}
TABLE_TITLES = {"before": "Table 3.1: before fine-tuning (initial weights)",
                "after": "Table 3.2: after fine-tuning (best trial of the sweep per backbone)"}
DEFAULT_KS = (10, 20, 50, 100, 1000)


@dataclass
class TablesConfig(EmbeddingOptions):
    """Validated settings of :func:`evaluate_tables` (checked before any worker starts).

    ``backbones``: table columns, in order. ``checkpoints``: backbone -> trained checkpoint
    folder (Table 3.2); backbones without one appear in Table 3.1 only. ``initial``: compute
    Table 3.1. ``initial_image_size`` / ``initial_embedding_dim``: of the initial models of
    backbones without a checkpoint (with one, the checkpoint's values are used so both tables
    compare the same input size and head).
    """

    crops_dir: str
    out_dir: str
    backbones: list[str]
    checkpoints: dict[str, str] = field(default_factory=dict)
    initial: bool = True
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    index_kind: str = "kdtree"
    split_args: dict | None = None
    query_seed: int = 0
    random_seed: int = 0
    seed: int = 0
    timing_queries: int = 200
    grid_query: int = 0
    initial_image_size: int | None = None
    initial_embedding_dim: int = 128
    lfw_root: str | None = None
    lfw_pairs: str | None = None
    lfw_crop_dir: str | None = None
    lfw_max_pairs_per_fold: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # the embedding options: batch_size, num_actors, use_gpu
        from facerec.index import INDEXES
        from facerec.models import BACKBONES

        if not self.backbones:
            raise ConfigError("backbones", self.backbones, "at least one backbone, e.g. ['resnet18', 'mobilenet_v2']")
        if len(set(self.backbones)) != len(self.backbones):
            raise ConfigError("backbones", self.backbones, "each backbone once")
        for b in self.backbones:
            BACKBONES.get(b)
        extra = sorted(set(self.checkpoints) - set(self.backbones))
        if extra:
            raise ConfigError("checkpoints", extra, f"checkpoints keyed by a backbone of {self.backbones}")
        if not self.initial and not self.checkpoints:
            raise ConfigError("initial", False, "True, or checkpoints for Table 3.2 (nothing to evaluate otherwise)")
        INDEXES.get(self.index_kind)
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ConfigError("ks", self.ks, "a non-empty list of integers >= 1, e.g. [10, 20, 50, 100, 1000]")
        for name in ("timing_queries",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "an integer >= 1")
        if self.initial_image_size is not None and (not isinstance(self.initial_image_size, int) or self.initial_image_size < 8):
            raise ConfigError("initial_image_size", self.initial_image_size, "None (the crop size) or an integer >= 8")
        if (self.lfw_pairs or self.lfw_crop_dir) and not self.lfw_root:
            raise ConfigError("lfw_root", None, "the LFW folder (with lfw-deepfunneled/) when lfw_pairs/lfw_crop_dir are set")
        if self.lfw_root is not None and not Path(self.lfw_root).is_dir():
            from facerec.errors import DataNotFoundError

            raise DataNotFoundError(f"LFW folder {self.lfw_root} not found; pass the folder holding pairs.txt and lfw-deepfunneled/")


def fine_tuning_verdicts(summary: pd.DataFrame) -> list[str]:
    """One plain sentence per backbone with both tables: did the best fine-tuned trial beat its
    initial weights on the test split (MAP@R, precision@1, and LFW when measured)?"""
    out = []
    for b in dict.fromkeys(summary["backbone"]):
        rows = summary[summary["backbone"] == b].set_index("stage")
        if not {"before", "after"} <= set(rows.index):
            continue
        bef, aft = rows.loc["before"], rows.loc["after"]
        parts = []
        for key, label, scale in (("map_at_r", "MAP@R", 1), ("precision_at_1", "precision@1", 1),
                                  ("lfw_accuracy_pct", "LFW accuracy %", 1)):
            if key in rows.columns and pd.notna(bef.get(key)) and pd.notna(aft.get(key)):
                parts.append(f"{label} {bef[key] * scale:.4g} -> {aft[key] * scale:.4g}")
        change = float(aft["map_at_r"]) - float(bef["map_at_r"])
        # Below a thousandth of MAP@R the two rankings are the same for practical purposes.
        verdict = "left it unchanged" if abs(change) < 1e-3 else "improved" if change > 0 else "made it WORSE"
        out.append(f"{b}: fine-tuning ({aft.get('weights')}) {verdict} on the test split's MAP@R: " + "; ".join(parts) + ".")
    return out


def _timed_single_queries(index, queries: np.ndarray, k: int, n: int) -> float:
    """Mean wall seconds of one top-k search of a single query (the first n queries)."""
    n = min(n, len(queries))
    index.search(queries[0], k)  # warm-up: first-call costs (imports, allocations) are not per query
    t0 = time.perf_counter()
    for i in range(n):
        index.search(queries[i], k)
    return (time.perf_counter() - t0) / n


def _grid(cfg: TablesConfig, stage: str, backbone: str, weights: str, query: pd.DataFrame, gallery: pd.DataFrame,
          dist: np.ndarray, ids: np.ndarray, qa: np.ndarray, ga: np.ndarray) -> str:
    from facerec.data.images import read_image
    from facerec.eval.plots import GRID_RANKS, retrieval_grid

    qi = min(max(cfg.grid_query, 0), len(query) - 1)
    root = Path(cfg.crops_dir)
    ranks = ids[qi, :GRID_RANKS]
    q_ident = int(query["identity"].iloc[qi])
    labels, matches = [], []
    for r, d in zip(ranks, dist[qi, :GRID_RANKS]):
        agree = float((ga[r] == qa[qi]).mean()) * 100
        ident = int(gallery["identity"].iloc[r])
        labels.append(f"id {ident}  d={d:.4g}\nattr agree {agree:.0f}%")
        matches.append(ident == q_ident)
    target = Path(cfg.out_dir) / "grids" / f"table_{TABLES[stage].replace('.', '_')}_{backbone}.png"
    retrieval_grid(
        read_image(root / query["crop_path"].iloc[qi]), [read_image(root / gallery["crop_path"].iloc[r]) for r in ranks],
        target, title=f"Table {TABLES[stage]} {backbone} ({weights}): query {query['image_id'].iloc[qi]}",
        query_label=f"id {q_ident}", result_labels=labels, matches=matches,
    )
    return str(target.relative_to(cfg.out_dir))


def evaluate_model(cfg: TablesConfig, stage: str, backbone: str, checkpoint: "str | os.PathLike | ModelRef", query: pd.DataFrame,
                   gallery: pd.DataFrame, qa: np.ndarray, ga: np.ndarray) -> dict[str, Any]:
    """Embed, index, search and score one model; returns its rows (one per k), its summary
    and the raw retrieval (``ids``: gallery row positions best first, ``distances``)."""
    from facerec.gallery.embed import embed_crops_with_stats
    from facerec.index import build_index
    from facerec.metrics.retrieval import attribute_metrics, map_at_r, precision_at_k, relevant_counts
    from facerec.models.reference import resolve_model

    checkpoint = resolve_model(checkpoint)  # a reference is not read again, here nor by the embedding
    meta = checkpoint.metadata
    ecfg = cfg.embed_config()
    # One pipeline (one actor start-up) for gallery and queries; the gallery's time is the
    # actors' compute time on its rows, divided over the pool.
    both = pd.concat([gallery[["crop_path"]], query[["crop_path"]]], ignore_index=True)
    emb, gstats = embed_crops_with_stats(both, cfg.crops_dir, checkpoint, ecfg)
    g_emb, q_emb = emb[:len(gallery)], emb[len(gallery):]
    gallery_s = float(gstats["row_seconds"][:len(gallery)].sum()) / gstats["actors"]
    t0 = time.perf_counter()
    index = build_index(cfg.index_kind, g_emb, np.arange(len(gallery), dtype=np.int64))
    build_s = time.perf_counter() - t0
    q_ids = query["identity"].to_numpy(dtype=np.int64)
    g_ids = gallery["identity"].to_numpy(dtype=np.int64)
    kmax = min(max(max(cfg.ks), int(relevant_counts(q_ids, g_ids).max())), len(gallery))
    dist, ids = index.search(q_emb, kmax)
    retrieved_labels = g_ids[ids]
    p1 = precision_at_k(q_ids, retrieved_labels, 1)
    mapr = map_at_r(q_ids, retrieved_labels, g_ids)
    k_eff = [min(k, len(gallery)) for k in cfg.ks]
    attr = attribute_metrics(qa, ga, ids, sorted(set(k_eff))).set_index("k")
    qtime = {k: _timed_single_queries(index, q_emb, k, cfg.timing_queries) for k in sorted(set(k_eff))}
    weights = meta.get("init", "?") if stage == "before" else f"trial {meta.get('trial', Path(checkpoint).parent.name)}"
    rows = [{"k_requested": k, "k": ke, "attribute_accuracy_pct": 100 * attr.at[ke, "attribute_accuracy"],
             "mean_attribute_distance": attr.at[ke, "mean_attribute_distance"], "query_time_s": qtime[ke]}
            for k, ke in zip(cfg.ks, k_eff)]
    summary = {
        "table": TABLES[stage], "stage": stage, "backbone": backbone, "weights": weights, "init": meta.get("init"),
        "loss": meta.get("loss"), "trial": meta.get("trial"), "checkpoint": str(checkpoint), "model_id": meta["model_id"],
        "image_size": int(gstats["image_size"]), "embedding_dim": int(gstats["embedding_dim"]),
        "gallery_embed_s": gallery_s, "gallery_images_per_s": len(gallery) / max(gallery_s, 1e-9),
        "embed_wall_s": gstats["seconds"], "embed_actors": gstats["actors"], "embed_device": gstats["device"],
        "index_kind": cfg.index_kind, "index_build_s": build_s,
        "precision_at_1": p1, "map_at_r": mapr, "queries": int(len(query)), "gallery": int(len(gallery)),
    }
    summary["grid"] = _grid(cfg, stage, backbone, weights, query, gallery, dist, ids, qa, ga)
    if cfg.lfw_root:
        from facerec.eval.lfw import LFWCropConfig, lfw_verification
        from facerec.detect import crops_detector

        crops_meta = read_crops_meta(cfg.crops_dir)
        lfw = lfw_verification(cfg.lfw_root, checkpoint, pairs_path=cfg.lfw_pairs, crop_dir=cfg.lfw_crop_dir,
                               crop_config=LFWCropConfig(input_kind=str(crops_meta.get("input_kind") or "haar_crop"),
                                                         crop_size=int(crops_meta.get("crop_size") or 218),
                                                         margin=float(crops_meta.get("margin", 0.2)),
                                                         detector=crops_detector(crops_meta)),
                               batch_size=cfg.batch_size, num_actors=cfg.num_actors, use_gpu=cfg.use_gpu,
                               max_pairs_per_fold=cfg.lfw_max_pairs_per_fold)
        from facerec.models.pretrained import record_lfw

        record_lfw(checkpoint, lfw, cfg.lfw_root)
        summary.update({"lfw_accuracy_pct": 100 * lfw["mean"], "lfw_std_pct": 100 * lfw["std"], "lfw_folds": lfw["folds"],
                        "lfw_pairs": lfw["pairs"], "lfw_centre_fallback": lfw["centre_fallback"],
                        "lfw_images": lfw["images"],
                        "lfw_per_fold_pct": [round(100 * a, 2) for a in lfw["per_fold"]["accuracy"]]})
    print(f"[{TABLES[stage]} {backbone}] {weights}: attr acc@{rows[0]['k']} {rows[0]['attribute_accuracy_pct']:.2f}%, "
          f"P@1 {p1:.3f}, MAP@R {mapr:.3f}, gallery {len(gallery)} embedded in {gallery_s:.1f} s", flush=True)
    return {"rows": pd.DataFrame(rows), "summary": summary, "ids": ids, "distances": dist,
            "query_embeddings": q_emb, "gallery_embeddings": g_emb}


def read_crops_meta(crops_dir: str | os.PathLike) -> dict:
    from facerec.data.schema import CROPS_TABLE
    from facerec.io import read_parquet_metadata

    return read_parquet_metadata(Path(crops_dir) / CROPS_TABLE)


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec)


def _k_label(row: pd.Series) -> str:
    if row["k_requested"] == "mean":
        return "mean"
    return str(row["k"]) if row["k"] == row["k_requested"] else f"{row['k_requested']} ({row['k']})"


def table_markdown(long: pd.DataFrame, summary: pd.DataFrame, stage: str, backbones: list[str]) -> str:
    """One study table: rows k + mean; per backbone attribute accuracy %, mean attribute
    distance, query seconds; then the random ranking; then the per-backbone summary."""
    part = long[long["stage"] == stage]
    have = [b for b in backbones if b in set(part["backbone"])]
    head = ["k"]
    for b in have:
        head += [f"{b} attr. acc. %", f"{b} attr. dist.", f"{b} query s"]
    head += ["random attr. acc. %", "random attr. dist."]
    lines = [f"## {TABLE_TITLES[stage]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = part[part["backbone"] == have[0]].reset_index(drop=True)
    for i in range(len(first)):
        cells = [_k_label(first.iloc[i])]
        for b in have:
            r = part[part["backbone"] == b].reset_index(drop=True).iloc[i]
            cells += [_fmt(r["attribute_accuracy_pct"], ".2f"), _fmt(r["mean_attribute_distance"], ".3f"),
                      _fmt(r["query_time_s"], ".2e")]
        cells += [_fmt(first.iloc[i]["random_attribute_accuracy_pct"], ".2f"),
                  _fmt(first.iloc[i]["random_mean_attribute_distance"], ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    s = summary[summary["stage"] == stage]
    lfw = "lfw_accuracy_pct" in s.columns and s["lfw_accuracy_pct"].notna().any()
    lines += ["", "| backbone | weights | model_id | input px | gallery embedding s (images/s) | index build s | "
                  "precision@1 | MAP@R |" + (" LFW acc. % (mean ± std, folds) |" if lfw else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|" if lfw else "")]
    for b in have:
        r = s[s["backbone"] == b].iloc[0]
        line = (f"| {b} | {r['weights']} | {r['model_id']} | {r['image_size']} | {r['gallery_embed_s']:.1f} "
                f"({r['gallery_images_per_s']:.1f}) | {r['index_build_s']:.3f} | {r['precision_at_1']:.3f} | "
                f"{r['map_at_r']:.3f} |")
        if lfw:
            line += f" {_fmt(r.get('lfw_accuracy_pct'), '.2f')} ± {_fmt(r.get('lfw_std_pct'), '.2f')} ({r.get('lfw_folds')}) |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def evaluate_tables(cfg: TablesConfig) -> dict[str, Any]:
    """Run the protocol of the module docstring; write to ``cfg.out_dir``:

    ``results.md`` (both tables + protocol), ``tables.csv`` (long form: one row per table x
    backbone x k, and the mean), ``table_3_1.csv`` / ``table_3_2.csv``, ``summary.csv`` (one row
    per model), ``results.json``, ``grids/table_3_x_<backbone>.png``.
    Returns {"long", "summary", "random", "protocol", "retrieval", "files"}.
    """
    from facerec.data.schema import attributes_matrix, load_crops
    from facerec.data.splits import assign_splits, check_data_version, query_gallery, resolve_split_args
    from facerec.metrics.retrieval import random_ranking_baseline
    from facerec.models.checkpoint import save_initial_checkpoint
    from facerec.models.reference import resolve_model

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    refs = {b: resolve_model(p) for b, p in cfg.checkpoints.items()}  # model.json read here, once
    ckpt_meta = {b: ref.metadata for b, ref in refs.items()}
    for b, m in ckpt_meta.items():
        if m["backbone"] != b:
            raise ConfigError(f"checkpoints[{b}]", cfg.checkpoints[b], f"a checkpoint of backbone {b} (it is {m['backbone']})")
    df, crops_meta = load_crops(cfg.crops_dir)
    for b, m in ckpt_meta.items():
        check_data_version(m, crops_meta, f"checkpoint {cfg.checkpoints[b]}")
    split_args = resolve_split_args(list(ckpt_meta.values()), cfg.split_args)
    test = assign_splits(df, **split_args)
    test = test[test["split"] == "test"].reset_index(drop=True)
    query, gallery = query_gallery(test, seed=cfg.query_seed)
    if len(query) == 0:
        raise ConfigError("split", split_args, "a test split with at least one identity of >= 2 images")
    qa, ga = attributes_matrix(query), attributes_matrix(gallery)
    k_eff = [min(k, len(gallery)) for k in cfg.ks]
    rnd = random_ranking_baseline(qa, ga, sorted(set(k_eff)), seed=cfg.random_seed).set_index("k")
    protocol = {
        "crops_dir": str(Path(cfg.crops_dir).resolve()), "data_version": crops_meta.get("data_version"),
        "split_args": split_args, "test_images": int(len(test)), "test_identities": int(test["identity"].nunique()),
        "queries": int(len(query)), "gallery": int(len(gallery)), "query_seed": cfg.query_seed,
        "random_seed": cfg.random_seed, "index_kind": cfg.index_kind, "ks": list(cfg.ks), "k_effective": k_eff,
        "timing_queries": min(cfg.timing_queries, len(query)),
    }
    print(f"evaluate: test split {protocol['test_images']} images of {protocol['test_identities']} identities -> "
          f"{len(query)} queries, gallery {len(gallery)}; split {split_args}", flush=True)

    models: list[tuple[str, str, Any]] = []
    if cfg.initial:
        for b in cfg.backbones:
            m = ckpt_meta.get(b, {})
            size = int(m.get("image_size") or cfg.initial_image_size or crops_meta.get("crop_size") or 218)
            dim = int(m.get("embedding_dim") or cfg.initial_embedding_dim)
            folder = out / "initial" / f"{b}-s{size}-d{dim}"
            im = save_initial_checkpoint(b, folder, size, dim, cfg.seed, crops_meta.get("data_version"))
            print(f"initial weights of {b}: {im['init']} (model_id {im['model_id']})", flush=True)
            models.append(("before", b, str(folder)))
    for b in cfg.backbones:
        if b in cfg.checkpoints:
            models.append(("after", b, refs[b]))

    long_rows, summaries, retrieval = [], [], {}
    for stage, b, ckpt in models:
        res = evaluate_model(cfg, stage, b, ckpt, query, gallery, qa, ga)
        s = res["summary"]
        summaries.append(s)
        retrieval[(stage, b)] = {k: res[k] for k in ("ids", "distances", "query_embeddings", "gallery_embeddings")}
        rows = res["rows"].copy()
        rows["random_attribute_accuracy_pct"] = [100 * rnd.at[k, "attribute_accuracy"] for k in rows["k"]]
        rows["random_mean_attribute_distance"] = [rnd.at[k, "mean_attribute_distance"] for k in rows["k"]]
        mean = {"k_requested": "mean", "k": "mean", **rows.drop(columns=["k_requested", "k"]).mean().to_dict()}
        rows = pd.concat([rows.astype({"k_requested": object, "k": object}), pd.DataFrame([mean])], ignore_index=True)
        for key in ("table", "stage", "backbone", "weights", "model_id", "gallery_embed_s", "precision_at_1", "map_at_r",
                    "queries", "gallery"):
            rows[key] = s[key]
        long_rows.append(rows)
    cols = ["table", "stage", "backbone", "weights", "model_id", "k_requested", "k", "attribute_accuracy_pct",
            "mean_attribute_distance", "query_time_s", "random_attribute_accuracy_pct", "random_mean_attribute_distance",
            "gallery_embed_s", "precision_at_1", "map_at_r", "queries", "gallery"]
    long = pd.concat(long_rows, ignore_index=True)[cols]
    summary = pd.DataFrame(summaries)

    files = {}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tables.csv", long.to_csv(index=False))
    files["tables.csv"] = str(out / "tables.csv")
    for stage, num in TABLES.items():
        part = long[long["stage"] == stage]
        if len(part):
            name = f"table_{num.replace('.', '_')}.csv"
            atomic_write_text(out / name, part.to_csv(index=False))
            files[name] = str(out / name)
    atomic_write_text(out / "summary.csv", summary.drop(columns=[c for c in summary.columns if c == "lfw_per_fold_pct"])
                      .to_csv(index=False))
    files["summary.csv"] = str(out / "summary.csv")
    md = [
        "# Retrieval tables (the original study's Tables 3.1 and 3.2)", "",
        f"Crops: `{protocol['crops_dir']}` (data_version {protocol['data_version']}). Identity-disjoint split "
        f"{json.dumps(split_args)}; test split: {protocol['test_images']} images of {protocol['test_identities']} "
        f"identities -> {protocol['queries']} queries (one per identity, seed {cfg.query_seed}), gallery "
        f"{protocol['gallery']} images. Index: `{cfg.index_kind}`, top-{max(k_eff)} search.", "",
        "Attribute accuracy: share of the 40 CelebA attributes a result shares with its query, averaged over the "
        "top k and over queries; attribute distance: number of differing attributes (= 40 x (1 - accuracy)). "
        f"Query s: mean wall time of one single-query top-k search through the index ({protocol['timing_queries']} "
        f"queries). Random: a seeded (seed {cfg.random_seed}) uniformly random ranking of the same gallery. "
        "k in parentheses: clipped to the gallery size. Gallery embedding s: decode + forward time of the gallery "
        "rows in the Ray Data actors, divided by the number of actors (actor start-up and model loading excluded; "
        "`embed_wall_s` in summary.csv is the pipeline's wall time for gallery + queries, start-up included).", "",
    ]
    for stage in TABLES:
        if (summary["stage"] == stage).any():
            md.append(table_markdown(long, summary, stage, cfg.backbones))
            md.append("Retrieval grids (query, ranks 1-9; green = same identity): " + ", ".join(
                f"[{r['backbone']}]({r['grid']})" for _, r in summary[summary["stage"] == stage].iterrows()) + "\n")
    verdicts = fine_tuning_verdicts(summary)
    if verdicts:
        md += ["## Did fine-tuning help?", ""] + [f"- {v}" for v in verdicts] + [""]
    if "lfw_accuracy_pct" in summary.columns:
        md += ["## LFW verification", "",
               "Pairs file folds; threshold fit on the other folds, Euclidean distance of the embeddings; inputs made "
               "by each model's input kind from the boxes of the crops' face detector (deep-funneled images where it "
               "accepts no face: a centred box, counted).", "",
               "| table | backbone | accuracy % | std % | per fold % | pairs | centre-crop fallbacks / images |",
               "|---|---|---|---|---|---|---|"]
        for _, r in summary.iterrows():
            md.append(f"| {r['table']} | {r['backbone']} | {r['lfw_accuracy_pct']:.2f} | {r['lfw_std_pct']:.2f} | "
                      f"{', '.join(f'{a:.1f}' for a in r['lfw_per_fold_pct'])} | {r['lfw_pairs']} | "
                      f"{r['lfw_centre_fallback']} / {r['lfw_images']} |")
        md.append("")
    atomic_write_text(out / "results.md", "\n".join(md))
    files["results.md"] = str(out / "results.md")
    atomic_write_json(out / "results.json", {"protocol": protocol, "config": asdict(cfg),
                                             "summary": summary.to_dict(orient="records"),
                                             "tables": long.to_dict(orient="records")})
    files["results.json"] = str(out / "results.json")
    print(f"evaluate: {len(summaries)} models, tables -> {out / 'results.md'} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return {"long": long, "summary": summary, "random": rnd.reset_index(), "protocol": protocol,
            "retrieval": retrieval, "query": query, "gallery": gallery, "files": files}


def best_checkpoints(run_dir: str | os.PathLike, backbones: list[str] | None = None,
                     score: str = "val_map_at_r") -> dict[str, str]:
    """Per backbone, the ``RUN/<trial>/best`` checkpoint of the trial with the highest
    validation ``score``: from ``RUN/sweep_summary.csv`` when present (status ok), else from
    the ``model.json`` of every ``RUN/*/best``. Ties go to the first trial by name."""
    from facerec.errors import DataNotFoundError
    from facerec.models import read_checkpoint_metadata

    run = Path(run_dir)
    if not run.is_dir():
        raise DataNotFoundError(f"run folder {run} not found; pass the --out folder of pipelines/train_sweep.py")
    candidates: list[tuple[str, str, float]] = []  # backbone, checkpoint, score
    summary_csv = run / "sweep_summary.csv"
    if summary_csv.is_file():
        s = pd.read_csv(summary_csv)
        if "status" in s.columns:
            s = s[s["status"].fillna("ok") == "ok"]
        for _, r in s.sort_values("trial").iterrows():
            ckpt = run / str(r["trial"]) / "best"
            if (ckpt / "model.json").is_file() and pd.notna(r.get(score)):
                candidates.append((str(r["backbone"]), str(ckpt), float(r[score])))
    if not candidates:
        for mj in sorted(run.glob("*/best/model.json")):
            meta = read_checkpoint_metadata(mj.parent)
            if meta.get(score) is not None and math.isfinite(float(meta[score])):
                candidates.append((meta["backbone"], str(mj.parent), float(meta[score])))
    best: dict[str, tuple[str, float]] = {}
    for b, ckpt, v in candidates:
        if b not in best or v > best[b][1]:
            best[b] = (ckpt, v)
    if backbones is not None:
        missing = [b for b in backbones if b not in best]
        if missing:
            raise DataNotFoundError(
                f"{run} has no finished trial (RUN/<trial>/best with a {score}) for backbone(s) {missing}; "
                f"it has {sorted(best)}. Train them or drop them from --backbones"
            )
        best = {b: best[b] for b in backbones}
    if not best:
        raise DataNotFoundError(f"{run} has no finished trial: no RUN/<trial>/best/model.json with a {score}")
    for b, (ckpt, v) in best.items():
        print(f"best {b}: {ckpt} ({score} {v:.4f})", flush=True)
    return {b: ckpt for b, (ckpt, _) in best.items()}
