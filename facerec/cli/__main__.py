"""``python -m facerec.cli COMMAND ...``: the ``facerec`` command without the console script."""

import sys

from facerec.cli.main import main

sys.exit(main())
