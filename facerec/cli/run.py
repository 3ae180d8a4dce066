"""``facerec run``: the command over :func:`facerec.run.plan_run` and :func:`facerec.run.run_plan`
(its --help is the library module's description of the run)."""

from __future__ import annotations

import argparse
import sys

import facerec.run
from facerec.cli.common import add_layout_argument, reports_errors


@reports_errors("facerec run")
def main(argv=None) -> int:
    from facerec.train.presets import PRESETS

    ap = argparse.ArgumentParser(prog="facerec run", description=facerec.run.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="labelled photo folder: CelebA layout or one folder per person (default: the "
                                   "embedded synthetic dataset)")
    add_layout_argument(ap)
    ap.add_argument("--work", default="out/run", help="folder for crops, gallery and results (default out/run)")
    ap.add_argument("--preset", default="face-smoke", choices=PRESETS.names(),
                    help="training preset (default face-smoke: dlib_resnet, minutes on 2 CPUs)")
    args = ap.parse_args(argv)
    plan = facerec.run.plan_run(args.work, args.data, args.preset,
                                preprocess={"layout": args.layout} if args.layout else None)
    facerec.run.run_plan(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
