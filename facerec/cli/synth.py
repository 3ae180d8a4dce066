"""``facerec data synth``: generate the embedded synthetic dataset (procedurally drawn faces in the
CelebA layout, :mod:`facerec.data.synth`)."""

from __future__ import annotations

import argparse

from facerec.cli.common import reports_errors


@reports_errors("facerec data synth")
def main(argv=None) -> int:
    from facerec.data.synth import default_synthetic_dir, generate_synthetic

    ap = argparse.ArgumentParser(prog="facerec data synth",
                                 description="Generate the embedded synthetic dataset in the CelebA layout.")
    ap.add_argument("--out", help="folder (default: $FACEREC_CACHE/synthetic-v1, FACEREC_CACHE defaulting to "
                                  "~/.cache/facerec)")
    ap.add_argument("--identities", type=int, default=None, help="number of identities")
    ap.add_argument("--images-per-identity", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    kwargs = {"seed": args.seed}
    if args.identities is not None:
        kwargs["n_identities"] = args.identities
    if args.images_per_identity is not None:
        kwargs["images_per_identity"] = args.images_per_identity
    root = generate_synthetic(args.out or default_synthetic_dir(), **kwargs)
    print(f"synthetic dataset: {root}")
    return 0
