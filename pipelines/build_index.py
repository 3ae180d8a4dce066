"""Embed a crops folder on a Ray Data actor pool and build the retrieval gallery + index(es).

    python pipelines/build_index.py --crops out/celeba-sample-crops --checkpoint runs/cpu-sweep/<trial>/best --out out/gallery
    python pipelines/build_index.py --crops CROPS --backbone resnet18 --initial --out out/gallery-initial --kinds kdtree,exact
    python pipelines/build_index.py --crops CROPS --checkpoint r18=RUN/a/best --checkpoint mnv2=RUN/b/best --split test --out G

The output is a served gallery (``python pipelines/serve.py --gallery G`` serves it); layout in
facerec.eval.gallery_index. ``--split test`` keeps only the identities held out of training
(the split recorded in the checkpoint; the checkpoint's data_version must match the crops).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facerec.eval.build_index_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
