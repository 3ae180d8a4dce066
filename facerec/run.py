"""``facerec run``: the main job end to end, each stage through the same front end a user
calls, each reading the folder the previous one wrote.

synthetic photos (or --data) -> preprocess (into the preset's input kind) -> train-sweep
(default preset face-smoke: the pretrained face model dlib_resnet fine-tuned with the six losses)
-> build-index (best checkpoint per backbone, test identities) -> evaluate (tables 3.1/3.2 + grids).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from facerec.cli import check_source, reports_errors


def _stage(name: str, fn, argv: list[str]) -> None:
    print(f"\n=== facerec run: {name} ===\n$ facerec {name} {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = fn(argv)
    if code:
        raise SystemExit(f"facerec run: stage {name!r} failed with exit code {code}")
    print(f"=== {name}: done in {time.perf_counter() - t0:.1f} s ===", flush=True)


@reports_errors("facerec run")
def main(argv=None) -> int:
    from facerec.train.presets import PRESETS

    ap = argparse.ArgumentParser(prog="facerec run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="CelebA-layout photo folder (default: the embedded synthetic dataset)")
    ap.add_argument("--work", default="out/run", help="folder for crops, gallery and results (default out/run)")
    ap.add_argument("--preset", default="face-smoke", choices=PRESETS.names(),
                    help="training preset (default face-smoke: dlib_resnet, minutes on 2 CPUs)")
    args = ap.parse_args(argv)

    from facerec.data.cli import preprocess_main
    from facerec.eval.build_index_cli import main as build_index_main
    from facerec.eval.evaluate_cli import main as evaluate_main
    from facerec.train.cli import main as train_main, sweep_input_kind
    from facerec.train.report import read_trials

    if args.data is not None:
        check_source(args.data)
    kind = sweep_input_kind(PRESETS.get(args.preset)()["backbones"])

    work = Path(args.work)
    crops, run, gallery, results = work / "crops", work / f"sweep-{args.preset}", work / "gallery", work / "results"
    t0 = time.perf_counter()
    _stage("preprocess", preprocess_main, (["--data", args.data] if args.data else [])
           + ["--input-kind", kind, "--out", str(crops)])
    _stage("train-sweep", train_main, ["--preset", args.preset, "--data", str(crops), "--out", str(run)])
    from facerec.eval.tables import best_checkpoints

    best = best_checkpoints(str(run), None)
    ckpt_args = [a for name, path in best.items() for a in ("--checkpoint", f"{name}={path}")]
    _stage("build-index", build_index_main, ["--crops", str(crops), *ckpt_args, "--split", "test",
                                             "--kinds", "kdtree,exact", "--out", str(gallery), "--overwrite"])
    _stage("evaluate", evaluate_main, ["--crops", str(crops), "--run", str(run), "--out", str(results)])
    trials = read_trials(run)
    print(f"\nfacerec run: finished in {time.perf_counter() - t0:.0f} s — {len(trials)} trials in {run}, "
          f"gallery {gallery}, tables {results / 'results.md'}. Serve it: facerec serve --gallery {gallery}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
