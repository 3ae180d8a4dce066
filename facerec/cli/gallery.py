"""``python -m facerec.gallery upgrade DIR``: convert a format-1 gallery in place;
``python -m facerec.gallery compact DIR``: fold its deltas and tombstones into one base segment."""

from __future__ import annotations

import argparse
import sys

from facerec.cli.common import reports_errors


@reports_errors("python -m facerec.gallery")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m facerec.gallery", description=__doc__)
    ap.add_argument("command", choices=("upgrade", "compact"))
    ap.add_argument("gallery")
    args = ap.parse_args(argv)
    if args.command == "upgrade":
        from facerec.gallery.upgrade import upgrade_gallery

        m = upgrade_gallery(args.gallery)
        print(f"upgraded {args.gallery}: {m['rows']} rows, format {m['format']}")
    else:
        from facerec.gallery import compact

        m = compact(args.gallery, force=True)
        print(f"compacted {args.gallery}: version {m['version']}, {m['rows']} rows in one segment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
