"""Photos in, people out: cluster the faces of a photo folder on Ray (no labels needed).

    facerec cluster --data PHOTOS --out PEOPLE
    facerec cluster --data PHOTOS --out PEOPLE --min-faces 3 --sheet-faces 40
    facerec cluster --data PHOTOS --out PEOPLE            # again after adding photos: new faces only

PHOTOS: an unlabelled folder, a folder per person or a CelebA-layout folder (labels are ignored);
--layout overrides the detected layout. PEOPLE gets people.parquet (face -> person, confidence, photo,
box), a contact sheet per person (people/person-NNNNN.png) and summary.json. Re-running reuses the
crops (PEOPLE/crops) and embeddings (PEOPLE/cache) and assigns only new faces to the people already
found; --recluster starts over. The thresholds come from the model's 1:1 calibration at --link-far,
--split-far and --merge-far (per-pair false accept rates). Every face of a photo is clustered (--faces all: a group
photo gives each of its people a row of people.parquet), and two faces of one photo are never one
person; --faces largest keeps one face per photo.
"""

from __future__ import annotations

import argparse
import sys

from facerec.cli.common import reports_errors


def parse_args(argv=None) -> argparse.Namespace:
    from facerec.cluster.thresholds import DEFAULT_LINK_FAR, DEFAULT_MERGE_FAR, DEFAULT_SPLIT_FAR
    from facerec.data.layouts import LAYOUTS
    from facerec.cluster.knn import graph_kinds

    ap = argparse.ArgumentParser(prog="facerec cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="photo folder")
    ap.add_argument("--out", required=True, help="output folder (made or updated)")
    ap.add_argument("--layout", choices=LAYOUTS.names(), help="how --data is read (default: detected)")
    ap.add_argument("--checkpoint", default="dlib_resnet", help="calibrated model (default dlib_resnet)")
    ap.add_argument("--min-faces", type=int, default=2, help="people with fewer faces are left unassigned (default 2)")
    ap.add_argument("--sheet-faces", type=int, default=24, help="faces per contact sheet (default 24)")
    ap.add_argument("--k", type=int, default=15, help="neighbours per face in the k-NN graph (default 15)")
    ap.add_argument("--snn", type=float, default=0.6, help="shared-neighbour share of a link (default 0.6)")
    ap.add_argument("--link-far", type=float, default=DEFAULT_LINK_FAR,
                    help=f"per-pair false accept rate of a link (default {DEFAULT_LINK_FAR:g})")
    ap.add_argument("--split-far", type=float, default=DEFAULT_SPLIT_FAR,
                    help="per-pair false accept rate above whose distance a linked group is split unless many "
                         f"links hold it (default {DEFAULT_SPLIT_FAR:g})")
    ap.add_argument("--merge-far", type=float, default=DEFAULT_MERGE_FAR,
                    help=f"per-pair false accept rate of a merge (default {DEFAULT_MERGE_FAR:g})")
    ap.add_argument("--index", default="auto", choices=graph_kinds(),
                    help="how the k-NN graph is built (auto: exact up to 50k faces, nndescent beyond; "
                         "or one of the index kinds)")
    ap.add_argument("--recluster", action="store_true", help="cluster every face again, not only new ones")
    ap.add_argument("--faces", choices=["all", "largest"], default="all",
                    help="faces of a photo to cluster: all (each its own row; two of one photo are never one "
                         "person) or the largest only (default all)")
    ap.add_argument("--batch-size", type=int, default=64)
    return ap.parse_args(argv)


@reports_errors("facerec cluster")
def main(argv=None) -> int:
    from facerec.cluster.algorithm import ClusterConfig
    from facerec.cluster.pipeline import ClusterRunConfig, run_cluster

    args = parse_args(argv)
    # every numeric option checked before Ray starts or anything is written
    ClusterConfig(link=1.0, merge=1.0, k=args.k, snn=args.snn, index=args.index, min_faces=args.min_faces)
    from facerec.cluster.thresholds import _far

    _far(args.link_far, "--link-far")
    _far(args.merge_far, "--merge-far")
    _far(args.split_far, "--split-far")
    cfg = ClusterRunConfig(data=args.data, out=args.out, checkpoint=args.checkpoint, layout=args.layout, k=args.k,
                           snn=args.snn, link_far=args.link_far, merge_far=args.merge_far,
                           split_far=args.split_far, min_faces=args.min_faces,
                           sheet_faces=args.sheet_faces, index=args.index, recluster=args.recluster,
                           batch_size=args.batch_size, faces=args.faces)
    run_cluster(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
