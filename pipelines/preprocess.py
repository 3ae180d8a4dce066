"""Crop faces from a CelebA-layout folder on Ray Data (see ``facerec.data.preprocess``).

    python pipelines/preprocess.py --data /data/celeba --out out/celeba-crops
    ray job submit --working-dir . -- python pipelines/preprocess.py --data /data/celeba --out /shared/crops
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facerec.data.cli import preprocess_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(preprocess_main())
