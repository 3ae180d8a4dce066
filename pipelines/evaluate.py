"""The original study's retrieval tables (3.1 before / 3.2 after fine-tuning) and LFW verification.

    python pipelines/evaluate.py                     # synthetic data + the latest runs/smoke-* sweep (if any)
    python pipelines/evaluate.py --crops out/celeba-sample-crops --run runs/cpu-sweep \\
        --backbones resnet18,mobilenet_v2 --lfw /work/shared/data/lfw-sample --out results/cpu-sweep
    python pipelines/evaluate.py --crops CROPS --checkpoint RUN/<trial>/best --out results/x   # explicit checkpoints
    python pipelines/evaluate.py --crops CROPS --backbones resnet18 --before-only --out results/initial

Per backbone the best trial of --run by validation MAP@R is evaluated on the identity-disjoint test
split recorded in its checkpoint; see facerec.eval.tables for the protocol. Outputs in --out:
results.md, tables.csv, table_3_1.csv, table_3_2.csv, summary.csv, results.json, grids/*.png.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facerec.eval.evaluate_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
