"""`facerec calibrate` as a script (for `ray job submit`); the options and examples are in facerec.cli.calibrate (--help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facerec.cli.calibrate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
