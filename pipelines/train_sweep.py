"""Train a sweep of losses x backbones on Ray Tune + Ray Train and write the run folder.

    python pipelines/train_sweep.py                          # smoke preset on the embedded synthetic data
    python pipelines/train_sweep.py --preset cpu --data /work/shared/data/celeba-sample --out runs/cpu-sweep
    ray job submit --working-dir . -- python pipelines/train_sweep.py --preset seed --data /data/celeba --out /shared/runs/seed

``--data`` is a preprocessed folder (crops.parquet + crops/) or a CelebA-layout photo folder,
which is preprocessed first into ``--crops`` (default: a cache folder keyed by the photo folder).
Outputs: RUN/<trial>/best (model.pt + model.json), RUN/sweep_summary.{md,csv}, RUN/plots/*.png.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facerec.train.cli import main, parse_args  # noqa: E402,F401  (parse_args: the cluster manifests' tests)

if __name__ == "__main__":
    sys.exit(main())
