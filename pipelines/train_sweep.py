"""`facerec train-sweep` as a script (for `ray job submit`); the options and examples are in facerec.cli.train_sweep (--help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facerec.cli.train_sweep import main, parse_args  # noqa: E402,F401  (parse_args: the cluster manifests' tests)

if __name__ == "__main__":
    sys.exit(main())
