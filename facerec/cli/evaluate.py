"""The original study's retrieval tables (3.1 before / 3.2 after fine-tuning) and LFW verification.

    python pipelines/evaluate.py                     # synthetic data + the latest runs/smoke-* sweep (if any)
    python pipelines/evaluate.py --crops out/celeba-sample-crops --run runs/cpu-sweep \\
        --backbones resnet18,mobilenet_v2 --lfw ../shared/data/lfw-sample --out results/cpu-sweep
    python pipelines/evaluate.py --crops CROPS --checkpoint RUN/<trial>/best --out results/x   # explicit checkpoints
    python pipelines/evaluate.py --crops CROPS --backbones resnet18 --before-only --out results/initial

Per backbone the best trial of --run by validation MAP@R is evaluated on the identity-disjoint test
split recorded in its checkpoint; see facerec.eval.tables for the protocol. Outputs in --out:
results.md, tables.csv, table_3_1.csv, table_3_2.csv, summary.csv, results.json, grids/*.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from facerec.cli.common import add_embedding_arguments, comma_list, embedding_fields, reports_errors
from facerec.data.sources import check_crops
from facerec.errors import ConfigError

# Relative to where the command runs, like the other stages' default folders.
RUNS_ROOT = Path(".")


def latest_smoke_run(root: Path = RUNS_ROOT / "runs") -> Path | None:
    """The newest ``runs/smoke-*`` folder with a sweep summary (the default sweep's output)."""
    runs = sorted((p for p in root.glob("smoke-*") if (p / "sweep_summary.csv").is_file()), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def parse_args(argv=None) -> argparse.Namespace:
    from facerec.index import INDEXES
    from facerec.models import BACKBONES

    ap = argparse.ArgumentParser(prog="facerec evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", help="preprocessed folder the models were trained on (default: the synthetic set)")
    ap.add_argument("--run", help="sweep run folder (RUN/<trial>/best, RUN/sweep_summary.csv)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                    help="explicit checkpoint folder (or a pretrained model name, e.g. dlib_resnet) instead of --run "
                         "(repeatable; one per backbone)")
    ap.add_argument("--backbones", type=comma_list(choices=BACKBONES.names()),
                    help="comma list (default: the backbones of the run/checkpoints)")
    ap.add_argument("--before-only", action="store_true", help="Table 3.1 only (initial weights)")
    ap.add_argument("--no-before", action="store_true", help="skip Table 3.1")
    ap.add_argument("--out", help="results folder (default: results/evaluate-<time>)")
    ap.add_argument("--ks", default=[10, 20, 50, 100, 1000], type=comma_list(int),
                    help="comma list of k (default 10,20,50,100,1000)")
    ap.add_argument("--index-kind", default="kdtree", choices=INDEXES.names(), help="kdtree is the study's (default)")
    ap.add_argument("--lfw", help="LFW folder (pairs.txt + lfw-deepfunneled/) for verification accuracy")
    ap.add_argument("--lfw-pairs", help="pairs file (default: LFW/pairs.txt)")
    ap.add_argument("--lfw-crops", help="cache folder of the LFW crops (default: $FACEREC_CACHE/lfw-crops/..., "
                                          "FACEREC_CACHE defaulting to ~/.cache/facerec)")
    ap.add_argument("--lfw-max-pairs-per-fold", type=int, help="quick check: first n matched + n mismatched per fold")
    ap.add_argument("--initial-image-size", type=int, help="input size of initial models without a checkpoint")
    add_embedding_arguments(ap)
    ap.add_argument("--seed", type=int, default=0, help="seed of the query choice, the random ranking and random-init heads")
    return ap.parse_args(argv)


@reports_errors("facerec evaluate")
def main(argv=None) -> int:
    from facerec.eval.tables import TablesConfig, best_checkpoints, evaluate_tables
    from facerec.models.pretrained import check_checkpoint
    from facerec.models.reference import resolve_model

    args = parse_args(argv)
    if args.run and args.checkpoint:
        raise ConfigError("--checkpoint", args.checkpoint, "either --run or --checkpoint, not both")
    if args.before_only and args.no_before:
        raise ConfigError("--before-only/--no-before", True, "at most one of them")
    backbones = args.backbones
    if args.crops is not None:
        check_crops(args.crops, labelled_for="evaluate")
    run = args.run
    if args.crops is None and run is None and not args.checkpoint:
        found = latest_smoke_run()
        run = str(found) if found else None
    models = [check_checkpoint(item) for item in args.checkpoint]  # folders resolved here, once
    checkpoints: dict[str, str] = {}
    if not args.before_only:
        if run:
            checkpoints = best_checkpoints(run, backbones)
        for item in models:
            ref = resolve_model(item)  # a pretrained model's name (dlib_resnet) works too
            b = ref.backbone
            if b in checkpoints:
                raise ConfigError("--checkpoint", str(ref), f"one checkpoint per backbone ({b} given twice)")
            checkpoints[b] = str(ref)
    if backbones is None:
        if checkpoints:
            backbones = list(checkpoints)
        else:
            from facerec.train.presets import smoke

            backbones = smoke()["backbones"]
    checkpoints = {b: c for b, c in checkpoints.items() if b in backbones}
    cfg = TablesConfig(
        crops_dir=args.crops or "", out_dir=args.out or str(RUNS_ROOT / "results" / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"),
        backbones=backbones, checkpoints=checkpoints, initial=not args.no_before,
        ks=args.ks, index_kind=args.index_kind,
        query_seed=args.seed, random_seed=args.seed, seed=args.seed, initial_image_size=args.initial_image_size,
        lfw_root=args.lfw, lfw_pairs=args.lfw_pairs, lfw_crop_dir=args.lfw_crops,
        lfw_max_pairs_per_fold=args.lfw_max_pairs_per_fold, **embedding_fields(args),
    )
    if args.crops is None:  # validated above; the synthetic set is preprocessed (on Ray) only now
        from facerec.train.data import resolve_data

        cfg = dataclasses.replace(cfg, crops_dir=str(resolve_data(None)))
        if not args.run and not args.checkpoint:
            print(f"evaluate: default data {cfg.crops_dir}; sweep {run or '(none found: Table 3.1 only)'}", flush=True)
    result = evaluate_tables(cfg)
    print(Path(result["files"]["results.md"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
