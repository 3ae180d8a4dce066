"""A Ray Tune grid over losses x backbones (optionally x lr x margin): one Tune trial per grid
point, whose function is a small driver that builds and runs one ``TorchTrainer`` (the Train V2
pattern: Tune schedules drivers, each driver's Ray Train run requests its own workers).

Concurrency is derived from ``ray.cluster_resources()``: as many trials as the cluster has room
for all their workers at once (CPUs, and GPUs when training on GPUs), so no trial's Train run
waits for resources another holds.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path

from facerec.io import atomic_write_json
from facerec.ray_utils import console, init_ray, ray_prints_to_log
from facerec.train.config import SweepConfig, TrainConfig
from facerec.train.data import TrainData, prepare_data
from facerec.train.report import write_report
from facerec.train.trainer import export_result, one_line, resolve_use_gpu, summarize

# The Tune function only waits on its Train run (the Train V2 controller itself takes 0 CPUs),
# so it reserves no CPU rather than Tune's default of a whole one (on a small machine a CPU per
# driver would halve the trials that fit). Tune refuses an empty request; memory stands in.
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 1024**2}


def _data_key(cfg: TrainConfig) -> str:
    keys = ("data_dir", "split_mode", "val_fraction", "test_fraction", "split_seed", "val_max_images", "seed",
            "num_workers")
    return json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True)


def prepare_sweep_data(trials: list[tuple[str, TrainConfig]]) -> dict[str, TrainData]:
    """Split each distinct data setting once and check every trial's config against it."""
    out: dict[str, TrainData] = {}
    for _, cfg in trials:
        key = _data_key(cfg)
        if key not in out:
            out[key] = prepare_data(cfg)
        else:
            cfg.check_data(out[key].train["identity"].to_numpy(), len(out[key].val))
    return out


def resolve_concurrency(trials: list[tuple[str, TrainConfig]], use_gpu: bool, max_concurrent: int | None) -> int:
    """How many trials run at once: the cluster's CPUs (and GPUs) divided by one trial's need."""
    import ray

    if max_concurrent is not None:
        return max(1, min(max_concurrent, len(trials)))
    res = ray.cluster_resources()
    need_cpu = max(c.num_workers * c.cpus_per_worker for _, c in trials)
    n = math.floor(res.get("CPU", 1) / need_cpu)
    if use_gpu:
        n = min(n, math.floor(res.get("GPU", 0) / max(c.num_workers for _, c in trials)))
    return max(1, min(n, len(trials)))


def _trial_driver(config: dict, trials: dict[str, dict], datasets: dict[str, TrainData]) -> None:
    """Tune function of one trial: run its TorchTrainer, export the best checkpoint and history,
    and forward every epoch's metrics to Tune (TuneReportCallback). ``config["trial_name"]``
    picks the trial's settings from ``trials`` (kept out of Tune's config so the status table
    shows names, not dicts)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from facerec.train.trainer import build_trainer

    name = config["trial_name"]
    spec = trials[name]
    cfg = TrainConfig.from_dict(spec["train"])
    out_dir = Path(spec["out_dir"])
    data = datasets[_data_key(cfg)]
    try:
        trainer = build_trainer(cfg, data, name=f"{name}-{cfg.fingerprint()}", storage_path=spec["storage_path"],
                                use_gpu=spec["use_gpu"], callbacks=[TuneReportCallback()], trial_name=name)
        result = trainer.fit()
        export_result(result, cfg, out_dir / name, name, counts=data.counts)
    except Exception as exc:
        row = summarize(name, cfg, [], None, status="error", error=f"{type(exc).__name__}: {exc}")
        atomic_write_json(out_dir / name / "result.json",
                          {**row, "config": cfg.to_dict(), "traceback": traceback.format_exc()})
        raise


def _trial_lines_callback(out_dir: Path, started: float):
    """A Tune callback for the sweep's driver: one summary line per finished trial (from the
    trial folder's result.json), printed where the user is looking (:func:`console`), not in a
    worker's log."""
    from ray.tune import Callback

    class TrialLines(Callback):
        def _line(self, trial, failed: bool) -> None:
            name = trial.config.get("trial_name", str(trial))
            path = out_dir / name / "result.json"
            row = json.loads(path.read_text()) if path.is_file() else None
            text = one_line(row) if row else f"[{name}] error: no result ({'failed' if failed else 'stopped'})"
            print(f"{text} [{time.time() - started:.0f} s into the sweep]", file=console(), flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, failed=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, failed=True)

    return TrialLines()


def run_sweep(sweep: SweepConfig, address: str | None = None) -> "object":
    """Run the grid; write RUN/<trial>/{best,history.json,result.json}, RUN/sweep_summary.{md,csv},
    RUN/plots/<trial>.png. Returns the summary table (pandas DataFrame). ``address``: see
    :func:`facerec.ray_utils.init_ray`."""
    import ray.tune

    trials = sweep.trial_configs()
    datasets = prepare_sweep_data(trials)          # all checks before Ray starts anything
    init_ray(address)
    out_dir = Path(sweep.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = sweep.storage_path or str(out_dir / "_ray")
    use_gpu = resolve_use_gpu(sweep.train)
    concurrency = resolve_concurrency(trials, use_gpu, sweep.max_concurrent)
    atomic_write_json(out_dir / "sweep_config.json", {**sweep.to_dict(), "use_gpu": use_gpu,
                                                       "max_concurrent_trials": concurrency,
                                                       "trials": [n for n, _ in trials]})
    first = next(iter(datasets.values()))
    print(f"sweep: {len(trials)} trials ({', '.join(n for n, _ in trials)}), {concurrency} at a time, "
          f"{'GPU' if use_gpu else 'CPU'}; data {first.counts}; out {out_dir}", flush=True)

    specs = {n: {"train": c.to_dict(), "out_dir": str(out_dir), "storage_path": storage, "use_gpu": use_gpu}
             for n, c in trials}
    driver = ray.tune.with_resources(ray.tune.with_parameters(_trial_driver, trials=specs, datasets=datasets),
                                     DRIVER_RESOURCES)
    t0 = time.time()
    # verbose=0 keeps Tune's trial tables out; its experiment header, which no setting turns off,
    # goes to the session's logs with the rest of Ray's. TrialLines prints one line a trial.
    with ray_prints_to_log("tune"):
        tuner = ray.tune.Tuner(
            driver,
            param_space={"trial_name": ray.tune.grid_search([n for n, _ in trials])},
            tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrency,
                                            trial_name_creator=lambda t: t.config["trial_name"],
                                            trial_dirname_creator=lambda t: t.config["trial_name"]),
            run_config=ray.tune.RunConfig(name="tune", storage_path=storage, verbose=0,
                                          failure_config=ray.tune.FailureConfig(max_failures=0),
                                          callbacks=[_trial_lines_callback(out_dir, t0)]),
        )
        tuner.fit()
    rows = []
    for name, cfg in trials:
        path = out_dir / name / "result.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
        else:
            rows.append(summarize(name, cfg, [], None, status="error", error="trial did not finish"))
    df = write_report(out_dir, rows)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"sweep done: {ok}/{len(rows)} trials ok in {time.time() - t0:.0f} s; "
          f"summary {out_dir / 'sweep_summary.md'}", flush=True)
    return df
