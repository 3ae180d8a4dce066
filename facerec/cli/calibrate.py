"""Calibrate a model's "same person" decision: distance thresholds at fixed false accept rates.

    facerec calibrate --model dlib_resnet --lfw ../shared/data/lfw-sample
    facerec calibrate --model dlib_resnet --crops out/celeba-aligned --out results/calibration-celeba
    facerec calibrate --model RUN/<trial>/best --crops CROPS --fars 0.1,0.01 --default-far 0.01

--lfw: the folds of pairs.txt; genuine = its matched pairs, impostors = every pair of different
people inside a fold. --crops: the identity-disjoint validation split of a `facerec preprocess`
folder (the checkpoint's recorded split), its identities dealt into --folds folds. Thresholds are
fitted on the other folds and scored on the held-out one (mean +- std and pooled); a FAR that the
held-out folds cannot resolve (fewer than --min-false-accepts / FAR impostor pairs) is reported as
such. Beside these 1:1 figures, an open-set (1:N) report, cross-validated by identity: FNIR at
each --open-set-fpirs FPIR for a gallery of the other folds' people and one of a tenth of the
people (open_set.csv, det.png). The calibration is stored beside the checkpoint (measured.json,
calibration/roc.png, det.png, calibration.md, calibration.csv, open_set.csv; for dlib_resnet in
its cached folder), where `facerec serve` reads it for /v1/verify and the same_person flag of
/v1/search (it overrides the calibration dlib_resnet ships with); --out writes a copy of the reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facerec.cli.common import add_embedding_arguments, add_gate_arguments, comma_list, embedding_fields, reports_errors
from facerec.data.sources import check_crops
from facerec.errors import DataNotFoundError


def parse_args(argv=None) -> argparse.Namespace:
    from facerec.eval.calibration import DEFAULT_FAR, DEFAULT_FARS, MIN_FALSE_ACCEPTS

    ap = argparse.ArgumentParser(prog="facerec calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder (RUN/<trial>/best) or a pretrained model name "
                                                   "(e.g. dlib_resnet)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--lfw", help="LFW folder (pairs.txt + lfw-deepfunneled/)")
    src.add_argument("--crops", help="preprocess output folder of the model's input kind (crops.parquet + crops/)")
    ap.add_argument("--lfw-pairs", help="pairs file (default: LFW/pairs.txt)")
    ap.add_argument("--lfw-crops", help="cache folder of the LFW crops (default: under the facerec cache)")
    ap.add_argument("--out", help="also write the reports (roc.png, calibration.md/.csv/.json) here")
    ap.add_argument("--no-store", dest="store", action="store_false",
                    help="do not store the calibration beside the checkpoint (reports in --out only)")
    ap.add_argument("--fars", type=comma_list(float), default=list(DEFAULT_FARS),
                    help="comma list of false accept rates (default 0.1,0.01,0.001)")
    ap.add_argument("--default-far", type=float, default=DEFAULT_FAR,
                    help="the FAR the server decides at by default (one of --fars; default 0.001)")
    ap.add_argument("--min-false-accepts", type=int, default=MIN_FALSE_ACCEPTS,
                    help="a FAR is resolvable when every held-out fold has at least this many impostor pairs per "
                         "1/FAR (default 10)")
    ap.add_argument("--open-set-fpirs", type=comma_list(float), default=[0.1, 0.01, 0.001],
                    help="comma list of false positive identification rates of the open-set (1:N) report "
                         "(default 0.1,0.01,0.001)")
    ap.add_argument("--folds", type=int, default=3, help="--crops: identity folds of the validation split (default 3)")
    ap.add_argument("--max-pairs-per-fold", type=int, default=2_000_000,
                    help="larger folds use a seeded sample of this many pairs (default 2000000)")
    ap.add_argument("--seed", type=int, default=0)
    add_gate_arguments(ap)  # --lfw: the faces are found with these (--crops: the crops' own)
    add_embedding_arguments(ap)
    return ap.parse_args(argv)


@reports_errors("facerec calibrate")
def main(argv=None) -> int:
    from facerec.detect import DetectorConfig
    from facerec.errors import ConfigError
    from facerec.eval.calibrate import CalibrateConfig, calibrate, check_crops_source
    from facerec.models.pretrained import check_checkpoint

    args = parse_args(argv)
    cfg = CalibrateConfig(fars=tuple(args.fars), default_far=args.default_far, min_false_accepts=args.min_false_accepts,
                          folds=args.folds, max_pairs_per_fold=args.max_pairs_per_fold, seed=args.seed,
                          detector=DetectorConfig.of(args).settings(), open_set_fpirs=tuple(args.open_set_fpirs),
                          **embedding_fields(args))
    model = check_checkpoint(args.model, "--model")  # a folder: its reference, read once
    if not args.store and not args.out:
        raise ConfigError("--no-store", True, "--out FOLDER as well (otherwise the calibration goes nowhere)")
    if args.lfw is not None:
        from facerec.eval.lfw import read_lfw_pairs

        if not Path(args.lfw).is_dir():
            raise DataNotFoundError(f"--lfw {args.lfw}: no such folder (expected pairs.txt and lfw-deepfunneled/)")
        read_lfw_pairs(args.lfw, args.lfw_pairs)  # a malformed pairs file fails here, naming its line
        source, path = "lfw", args.lfw
    else:
        if args.lfw_pairs or args.lfw_crops:
            raise ConfigError("--lfw-pairs/--lfw-crops", args.lfw_pairs or args.lfw_crops, "only with --lfw")
        check_crops(args.crops, labelled_for="calibrate")
        check_crops_source(args.crops, model)  # another input kind than the model's: one line, now
        source, path = "crops", args.crops
    import shlex

    command = "facerec calibrate " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    result = calibrate(model, source, path, cfg, out_dir=args.out, store=args.store, pairs_path=args.lfw_pairs,
                       crop_dir=args.lfw_crops, command=command)
    for where in result["stored_in"]:
        print(f"calibrate: stored beside {where}")
    print(Path(result["files"]["table_md"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
