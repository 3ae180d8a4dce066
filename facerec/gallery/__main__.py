"""``python -m facerec.gallery upgrade|compact DIR``: an entry point, not a library module (the
command is :mod:`facerec.cli.gallery`)."""

import sys

from facerec.cli.gallery import main

if __name__ == "__main__":
    sys.exit(main())
