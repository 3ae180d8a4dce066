"""facerec: face image retrieval at cluster scale on Ray.

Stages (each reads the folder the previous one wrote):
photos -> crops + Parquet table (``facerec.data``) -> checkpoints (``facerec.train``)
-> embeddings + index (``facerec.gallery``, ``facerec.index``) -> tables (``facerec.eval``), people
(``facerec.cluster``) and the HTTP API (``facerec.serve``).

Where things live, top floor first (a module imports its floor and those below; the README's
*Layout* says more, tests/test_layering.py checks it):

7. ``cli`` -- the ``facerec`` commands, one module each; no library module imports it
6. ``run`` -- ``facerec run``'s chain of stages
5. ``serve`` -- Ray Serve deployments, the FastAPI ingress (schemas, http_errors, parsing, auth), the page
4. ``eval`` -- the study's tables, LFW, calibration reports; ``cluster`` -- photos -> people
3. ``gallery`` -- the gallery folder, build-index and its embedding engines; ``train`` -- Ray Train / Tune
2. ``data`` -- layouts, preprocess, crops cache, synth; ``detect`` -- detectors and the face gate;
   ``models`` -- backbones, checkpoints, the model reference (``models.reference``), calibration
1. ``dlibport`` -- dlib's formats and model (``dlibport.facts``: dlib_resnet's facts); ``index``;
   ``losses``; ``metrics``
0. ``errors``, ``io``, ``registry``, ``progress``, ``ray_utils``
"""

__version__ = "0.1.0"
