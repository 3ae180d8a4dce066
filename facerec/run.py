"""``facerec run``: the main job end to end, each stage a library call with its validated config
object, each reading the folder the previous one wrote.

synthetic photos (or --data) -> preprocess (into the preset's input kind) -> train-sweep
(default preset face-smoke: the pretrained face model dlib_resnet fine-tuned with the six losses)
-> build-index (best checkpoint per backbone, test identities) -> evaluate (tables 3.1/3.2 + grids).

:func:`plan_run` builds every stage's config (:class:`~facerec.data.preprocess.PreprocessConfig`,
:class:`~facerec.train.config.SweepConfig`, :class:`~facerec.gallery.build_index.BuildIndexConfig`,
:class:`~facerec.eval.tables.TablesConfig`) and so validates all of them before anything starts or
is written; :func:`run_plan` runs them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from facerec.errors import ConfigError

PENDING = "(best trial of the sweep)"
"""Stands for a checkpoint the sweep has not trained yet while the later stages' configs are validated."""


@dataclass
class RunPlan:
    """Every stage's validated config; the later stages' checkpoints are filled in after training."""

    source: str | None          # CelebA-layout photo folder; None: the embedded synthetic dataset
    work: Path
    preset: str
    preprocess: Any             # PreprocessConfig
    crops: Path
    sweep: Any                  # SweepConfig (validated without the crops, which do not exist yet)
    train_overrides: dict = field(default_factory=dict)
    sweep_overrides: dict = field(default_factory=dict)
    gallery: Any = None         # BuildIndexConfig
    tables: Any = None          # TablesConfig


def _fields(kind: type, overrides: dict | None, stage: str) -> dict:
    unknown = sorted(set(overrides or {}) - {f.name for f in dataclasses.fields(kind)})
    if unknown:
        raise ConfigError(f"{stage} settings", unknown, f"fields of {kind.__name__}")
    return dict(overrides or {})


def plan_run(work: str | Path = "out/run", data: str | None = None, preset: str = "face-smoke",
             preprocess: dict | None = None, train: dict | None = None, sweep: dict | None = None,
             gallery: dict | None = None, tables: dict | None = None) -> RunPlan:
    """Build and validate the configs of every stage; starts nothing and writes nothing.

    ``preprocess``/``gallery``/``tables``: overrides of the PreprocessConfig, BuildIndexConfig and
    TablesConfig fields; ``train``/``sweep``: overrides of the preset's TrainConfig and SweepConfig
    fields (losses, backbones, ...). A bad value is a
    ConfigError naming its field (a DataNotFoundError naming a missing folder)."""
    from facerec.data.preprocess import PreprocessConfig
    from facerec.data.sources import check_source
    from facerec.eval.tables import TablesConfig
    from facerec.gallery.build_index import BuildIndexConfig
    from facerec.train.config import SweepConfig, TrainConfig, data_prepared_later, sweep_input_kind
    from facerec.train.presets import PRESETS, build_sweep

    if data is not None:  # the run trains: its photos must name people
        check_source(data, layout=(preprocess or {}).get("layout"), labelled_for="facerec run")
    PRESETS.get(preset)  # ConfigError listing the presets
    work = Path(work)
    crops, run, gallery_dir, results = work / "crops", work / f"sweep-{preset}", work / "gallery", work / "results"
    train = _fields(TrainConfig, train, "train")
    sweep_overrides = _fields(SweepConfig, sweep, "sweep")
    for stage, given, owned in (("train", train, "data_dir"), ("sweep", sweep_overrides, "train"),
                                ("sweep", sweep_overrides, "out_dir")):
        if owned in given:
            raise ConfigError(f"{stage} settings", [owned], f"fields other than {owned} (facerec run sets it from --work)")
    with data_prepared_later():
        sweep = build_sweep(preset, str(crops), str(run), train, **sweep_overrides)
    kind = sweep_input_kind(sweep.backbones)
    pre = PreprocessConfig(**{"input_kind": kind, **_fields(PreprocessConfig, preprocess, "preprocess")})
    if pre.input_kind != kind:
        raise ConfigError("preprocess.input_kind", pre.input_kind, f"{kind}, the input kind of {sweep.backbones}")
    if pre.several_faces == "all":  # refused here, before the photos are cropped for nothing
        raise ConfigError("preprocess.several_faces", pre.several_faces,
                          "'largest' or 'drop': training, the gallery and the tables need one face per photo (a "
                          "photo's label names one person); every face of a photo is for `facerec cluster`")
    pending = {b: PENDING for b in sweep.backbones}
    gallery_cfg = BuildIndexConfig(**{"crops_dir": str(crops), "out_dir": str(gallery_dir), "checkpoints": pending,
                                        "split": "test", "kinds": ["kdtree", "exact"], "overwrite": True,
                                        **_fields(BuildIndexConfig, gallery, "gallery")})
    tables_cfg = TablesConfig(**{"crops_dir": str(crops), "out_dir": str(results), "backbones": list(sweep.backbones),
                                 "checkpoints": pending, **_fields(TablesConfig, tables, "tables")})
    return RunPlan(source=data, work=work, preset=preset, preprocess=pre, crops=crops, sweep=sweep,
                   train_overrides=train, sweep_overrides=sweep_overrides, gallery=gallery_cfg, tables=tables_cfg)


def _stage(name: str, what: str, fn: Callable[[], Any], seconds: dict[str, float]) -> Any:
    """One header line; the stage itself prints its progress line and its summary (the run's last
    line gives every stage's time)."""
    print(f"== {name}: {what}", flush=True)
    t0 = time.perf_counter()
    out = fn()
    seconds[name] = time.perf_counter() - t0
    return out


def preprocess_line(summary: dict) -> str:
    """The one-line summary of a preprocess run (the full one is the folder's summary.json)."""
    from facerec.data.preprocess import who_was_kept

    dropped = ", ".join(f"{r} {n}" for r, n in summary["dropped"].items()) or "none"
    return (f"preprocess: kept {summary['kept']} of {summary['listed']} images (dropped: {dropped}), "
            f"{who_was_kept(summary)}, {summary['seconds']:.1f} s -> {summary['out']}")


def run_plan(plan: RunPlan) -> dict[str, Any]:
    """Run the stages of ``plan`` in order; returns {crops, run, gallery, results, trials}."""
    from facerec.data.preprocess import preprocess
    from facerec.eval.tables import best_checkpoints, evaluate_tables, fine_tuning_verdicts
    from facerec.gallery.build_index import build_gallery_index
    from facerec.train.presets import build_sweep
    from facerec.train.report import read_trials
    from facerec.train.sweep import run_sweep

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    source = plan.source
    if source is None:
        from facerec.data.synth import ensure_synthetic

        source = str(ensure_synthetic())
    summary = _stage("preprocess", f"{source} -> {plan.crops} ({plan.preprocess.input_kind}, {plan.preprocess.engine})",
                     lambda: preprocess(source, plan.crops, plan.preprocess), seconds)
    print(preprocess_line(summary), flush=True)

    # Validated again now that the crops exist: the split and batch plans are checked against them.
    sweep = build_sweep(plan.preset, str(plan.crops), plan.sweep.out_dir, plan.train_overrides, **plan.sweep_overrides)
    run = Path(sweep.out_dir)
    df = _stage("train-sweep", f"preset {plan.preset}: {sweep.losses} x {sweep.backbones} -> {run}",
                lambda: run_sweep(sweep), seconds)
    failed = df[df["status"] != "ok"]
    if len(failed):
        raise SystemExit(f"facerec run: stage 'train-sweep' failed: {len(failed)} of {len(df)} trials did not finish "
                         f"({', '.join(map(str, failed['trial']))}); see {run}")

    best = best_checkpoints(str(run), None)
    gallery = dataclasses.replace(plan.gallery, checkpoints=best)
    _stage("build-index", f"{', '.join(f'{n}={p}' for n, p in best.items())} -> {gallery.out_dir} "
           f"({gallery.split} split, {','.join(gallery.kinds)})", lambda: build_gallery_index(gallery), seconds)

    tables = dataclasses.replace(plan.tables, checkpoints={b: p for b, p in best.items() if b in plan.tables.backbones})
    result = _stage("evaluate", f"{plan.crops} + {run} -> {tables.out_dir}", lambda: evaluate_tables(tables), seconds)
    for verdict in fine_tuning_verdicts(result["summary"]):
        print(f"evaluate: {verdict}", flush=True)
    trials = read_trials(run)
    stages = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    print(f"facerec run: finished in {time.perf_counter() - t0:.0f} s ({stages}) — {len(trials)} trials in {run}, "
          f"gallery {gallery.out_dir}, tables {Path(tables.out_dir) / 'results.md'}. "
          f"Serve it: facerec serve --gallery {gallery.out_dir}", flush=True)
    return {"crops": plan.crops, "run": run, "gallery": Path(gallery.out_dir), "results": Path(tables.out_dir),
            "trials": len(trials)}
