"""``haar``: OpenCV's frontal-face Haar cascade (Viola & Jones, CVPR 2001) in the original study's
two-pass scheme (:class:`facerec.data.haar.HaarDetector`), unchanged, so the study's tables can
be reproduced with ``--detector haar``. It gives no confidence: every box scores 1.0."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from facerec.detect import DETECTORS
from facerec.detect.base import DLIB, BoxMap, FaceDetector, Faces


@DETECTORS.register("haar")
class Haar(FaceDetector):
    name = "haar"
    version = 1
    # The study's settings: scan step 1.1, smallest window 24 px, no score to gate on.
    defaults = {"min_confidence": 0.0, "min_face": 24, "scale_step": 1.1}
    # Haar boxes -> dlib's detector boxes: fitted by benchmarks/fit_box_maps.py (see there).
    box_maps = {DLIB: BoxMap()}

    def __init__(self, config):
        super().__init__(config)
        from facerec.data.haar import HaarDetector

        c = self.config
        self._haar = HaarDetector(c.scale_step, c.min_neighbors, c.min_face, c.detect_max_side)

    def detect_many(self, images: Sequence[np.ndarray]) -> list[Faces]:
        out = []
        for rgb in images:
            det = self._haar.detect(rgb)
            out.append(Faces(det.boxes, np.ones(len(det.boxes)),
                             {"haar_pass": det.pass_used, "faces_pass1": det.faces_pass1,
                              "faces_pass2": det.faces_pass2}))
        return out
