"""Serve face retrieval over HTTP (Ray Serve): web page at /, API at /v1/..., docs at /docs.

With no arguments it runs on the embedded default data: a synthetic CelebA-layout set
(facerec.data.synth), Haar-cropped by ``preprocess``, with two untrained models (ResNet-50 and
MobileNet-V2, batch norms recalibrated on the crops) and a gallery of every crop:

    python pipelines/serve.py                       # http://127.0.0.1:8000/
    python pipelines/serve.py --data /work/shared/data/celeba-sample \\
        --checkpoint resnet50=runs/sweep/<trial>/best --checkpoint mobilenet_v2=runs/sweep/<trial2>/best
    python pipelines/serve.py --gallery GALLERY_DIR  # serve an existing gallery (its checkpoints)

Everything derived is cached under --workdir (default ~/.cache/facerec/serve) and reused when
it matches; --rebuild forces a new gallery.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facerec.serve.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
