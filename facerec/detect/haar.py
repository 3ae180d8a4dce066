"""``haar``: OpenCV's frontal-face Haar cascade (Viola & Jones, CVPR 2001) in the original study's
two-pass scheme (:class:`facerec.data.haar.HaarDetector`), unchanged, so the study's tables can
be reproduced with ``--detector haar``. It gives no confidence: every box scores 1.0."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from facerec.detect.base import DETECTORS, DLIB, BoxMap, FaceDetector, Faces


@DETECTORS.register("haar")
class Haar(FaceDetector):
    name = "haar"
    version = 2  # 2: boxes mapped into dlib's convention for the landmark step
    # The study's settings: scan step 1.1, smallest window 24 px, no score to gate on.
    defaults = {"min_confidence": 0.0, "min_face": 24, "scale_step": 1.1}
    # Haar boxes -> dlib's frontal detector boxes, which dlib's shape predictor was trained on:
    # benchmarks/fit_box_maps.py, the median ratios over the 4,424 faces of celeba-sample that both
    # found (dlib's HOG with one upsample). dlib's box is 11 % smaller and 6.6 % of the height lower.
    # Only the landmark step uses it; the study's crop (haar_crop) is drawn around the Haar box itself.
    box_maps = {DLIB: BoxMap(dx=-0.0057, dy=0.0659, sw=0.8926, sh=0.8935)}

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
