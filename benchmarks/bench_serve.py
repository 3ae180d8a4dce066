"""Closed-loop HTTP load on the Serve app over loopback: requests/s, p50/p99 latency and error
counts at several concurrencies, with dynamic batching on and off in the same run.

Each of C clients sends ``POST /v1/search`` (a real face photo, multipart, k=9), waits for the
answer, sends the next: a closed loop, so throughput is what the server sustains at that
concurrency. Batching is switched between settings through the Embedder's ``user_config``
(``max_batch_size`` 1 vs N; replicas are reconfigured, not restarted) and checked on
``/v1/models`` before measuring.

    python benchmarks/bench_serve.py                         # 30 s per cell, concurrency 1/8/32
    python benchmarks/bench_serve.py --duration 5 --warmup 2  # quick

Queries: photos of /work/shared/data/celeba-sample (those the default detector finds a face in) when
present, else the synthetic photos. Targets: no 5xx; at concurrency 32 batched throughput
>= 1.5x unbatched (a torchvision backbone). For ``dlib_resnet`` (the default model) face detection,
not the forward pass, dominates a request on two CPUs, so the target is instead requests/s at the
top concurrency >= 0.75x the images/s of the same per-request steps (decode, detection, landmarks, chip,
forward, index search) run one after another in this process before the server starts
(``--baseline-images``), i.e. the serving stack costs at most a quarter. The Embedder replica's
resident memory (VmRSS, and its peak VmHWM) is read from /proc after each setting.
Writes CSV + Markdown to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("FACEREC_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


def load_queries(n: int, source: Path | None) -> tuple[list[bytes], str]:
    """Up to ``n`` JPEGs with a face the default detector accepts (so every request exercises the model)."""
    from facerec.data.images import decode_image
    from facerec.detect import DetectorConfig

    if source is None:
        celeba = SHARED / "celeba-sample" / "img_celeba"
        source = celeba if celeba.is_dir() else None
    if source is None:
        from facerec.data.synth import ensure_synthetic

        source = Path(ensure_synthetic()) / "img_celeba"
    det = DetectorConfig().build()
    out = []
    for p in sorted(Path(source).iterdir()):
        data = p.read_bytes()
        try:
            if len(det.find(decode_image(data))):
                out.append(data)
        except Exception:
            continue
        if len(out) >= n:
            break
    if not out:
        raise SystemExit(f"no photo with a detectable face in {source}")
    return out, str(source)


# Result column -> key of the answer's ``timing_ms``. Embedder times are per batch (each request
# of a batch reports its batch's); the ingress_* times are seen by the Ingress: its wait for the
# Embedder's answer (queueing included), multipart parsing, and its whole handling (latency minus
# ingress_total is proxy + client + network).
TIMING_COLUMNS = {
    "mean_batch": "batch_size",
    "prepare_ms": "embed_prepare",
    "forward_ms": "embed_forward",
    "ingress_parse_ms": "parse",
    "ingress_embed_ms": "embed",
    "ingress_total_ms": "total",
}


async def closed_loop(url: str, queries: list[bytes], concurrency: int, duration: float, warmup: float,
                      model: str, k: int) -> dict:
    import httpx

    stats = {"lat": [], "codes": {}, "errors": 0, **{col: [] for col in TIMING_COLUMNS}}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t_start = time.perf_counter()
        t_measure = t_start + warmup
        t_end = t_measure + duration

        async def worker(i: int) -> None:
            j = i
            while True:
                now = time.perf_counter()
                if now >= t_end:
                    return
                data = queries[j % len(queries)]
                j += concurrency
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")},
                                          data={"k": str(k), "model": model})
                    code = r.status_code
                    timing = r.json().get("timing_ms", {}) if code == 200 else {}
                except Exception:
                    code, timing = None, {}
                t1 = time.perf_counter()
                # Completions inside the window count (whenever they started): with multi-second
                # latencies, counting only requests that also started inside it would undercount.
                if t_measure <= t1 <= t_end:
                    if code is None:
                        stats["errors"] += 1
                    else:
                        stats["codes"][code] = stats["codes"].get(code, 0) + 1
                        stats["lat"].append(t1 - t0)
                        if timing:
                            for col, key in TIMING_COLUMNS.items():
                                stats[col].append(timing[key])

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    lat = np.asarray(stats["lat"]) * 1e3
    codes = stats["codes"]
    n = int(sum(codes.values()))
    return {
        "requests": n,
        "rps": n / duration,
        "p50_ms": float(np.percentile(lat, 50)) if n else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if n else float("nan"),
        "ok_2xx": int(sum(v for c, v in codes.items() if 200 <= c < 300)),
        "err_4xx": int(sum(v for c, v in codes.items() if 400 <= c < 500)),
        "err_5xx": int(sum(v for c, v in codes.items() if c >= 500)),
        "conn_errors": stats["errors"],
        **{col: float(np.mean(stats[col])) if stats[col] else float("nan") for col in TIMING_COLUMNS},
    }


def in_process_baseline(checkpoint: str, queries: list[bytes], gallery: Path, n: int, model: str) -> dict:
    """Images/s of the per-request steps in this process, no serving stack: the Embedder's own
    code (``FaceEmbedderCore``) then a top-k search of the gallery index, one photo at a time."""
    from facerec.serve.embedder import FaceEmbedderCore
    from facerec.gallery import load_saved_index

    from facerec.models.onnx_runtime import cpu_export

    # The runtime the served replica uses (build_app exports the ONNX file the same way).
    onnx = cpu_export(checkpoint)
    core = FaceEmbedderCore(checkpoint, runtime="auto", onnx_path=onnx, device="cpu")
    print(f"in-process baseline runtime: {core.runtime}", flush=True)
    index = load_saved_index(gallery, model)
    core.embed_many([(queries[0], "largest", False)])  # warm-up: first-call allocations
    t0 = time.perf_counter()
    for i in range(n):
        res = core.embed_many([(queries[i % len(queries)], "largest", False)])[0]
        for face in res.get("faces", []):
            index.search(face["embedding"], 9)
    secs = time.perf_counter() - t0
    return {"images": n, "seconds": secs, "images_per_s": n / secs, "runtime": core.runtime}


def replica_memory(url: str) -> dict:
    """RSS / peak RSS (MB) each Embedder replica reports about its own process on /v1/models."""
    import httpx

    models = httpx.get(url + "/v1/models", timeout=60).json()["models"]
    return {m["name"]: {"rss_mb": m.get("rss_mb"), "peak_mb": m.get("peak_rss_mb"), "runtime": m.get("runtime")}
            for m in models}


def markdown(rows: list[dict], header: str) -> str:
    cols = ["batching", "max_batch_size", "concurrency", "requests", "rps", "p50_ms", "p99_ms", "mean_batch",
            "prepare_ms", "forward_ms", "ingress_parse_ms", "ingress_embed_ms", "ingress_total_ms",
            "ok_2xx", "err_4xx", "err_5xx", "conn_errors"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each cell")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batch-size", type=int, default=16, help="max_batch_size of the batched setting")
    p.add_argument("--batch-wait-ms", type=float, default=0.0)
    p.add_argument("--model", default="dlib_resnet", help="served model to load (dlib_resnet, the default, or a --checkpoint name)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="with no --checkpoint: untrained resnet50 + mobilenet_v2 (the earlier serving benchmark)")
    p.add_argument("--baseline-images", type=int, default=200, help="photos through the in-process baseline (0: skip)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--gallery", help="existing gallery folder (default: built like pipelines/serve.py)")
    p.add_argument("--crops", help="preprocess output to build the gallery from (default: synthetic set)")
    p.add_argument("--data", help="CelebA-layout folder to preprocess for the gallery")
    p.add_argument("--queries", help="folder of query photos (default: celeba-sample if present)")
    p.add_argument("--n-queries", type=int, default=200)
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--model-cpus", type=float, default=None, help="CPUs reserved by the Embedder replica (default: all but 0.5)")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--prepare-threads", type=int, default=None, help="decode/input threads per batch (default: ModelConfig's)")
    p.add_argument("--num-gpus", type=float, default=0.0)
    p.add_argument("--ingress-replicas", type=int, default=1)
    p.add_argument("--port", type=int, default=8431)
    p.add_argument("--workdir", default=None, help="galleries and models built here (default: facerec serve's, "
                                                  "$FACEREC_CACHE/serve)")
    p.add_argument("--out", default="results/bench_serve")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from facerec.models.pretrained import parse_checkpoints
    from facerec.ray_utils import init_ray
    from facerec.serve.app import ServeConfig, build_app, check_fits
    from facerec.serve.local import prepare_gallery
    from facerec.serve.runtime import apply_serve_env, run_app

    serve_env = apply_serve_env()  # as pipelines/serve.py runs it
    init_ray()
    gallery, checkpoints = prepare_gallery(args.workdir, gallery=args.gallery, crops=args.crops, data=args.data,
                                           checkpoints=parse_checkpoints(args.checkpoint),
                                           untrained=args.allow_untrained and not args.checkpoint)
    if args.model not in checkpoints:
        raise SystemExit(f"--model {args.model!r} is not in the gallery's models {sorted(checkpoints)}")
    queries, qsource = load_queries(args.n_queries, Path(args.queries) if args.queries else None)
    baseline = (in_process_baseline(checkpoints[args.model], queries, Path(gallery), args.baseline_images, args.model)
                if args.baseline_images else None)
    if baseline:
        print(f"in-process baseline: {baseline['images_per_s']:.2f} images/s ({baseline['images']} photos, "
              f"{baseline['seconds']:.1f} s)", flush=True)
    memory = {}
    cpus = float(ray.cluster_resources().get("CPU", 1))
    model_cpus = args.model_cpus if args.model_cpus is not None else max(0.5, cpus - 0.25 * (1 + args.ingress_replicas))
    base = {"name": args.model, "checkpoint": checkpoints[args.model], "num_cpus": model_cpus, "num_gpus": args.num_gpus,
            "batch_wait_timeout_s": args.batch_wait_ms / 1000.0, "torch_threads": args.torch_threads,
            "prepare_threads": args.prepare_threads,
            "max_ongoing_requests": max(64, 2 * args.batch_size, 2 * max(args.concurrency))}
    settings = [("off", 1), ("on", args.batch_size)]
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    url = f"http://127.0.0.1:{args.port}"
    rows = []
    import httpx

    try:
        for label, mbs in settings:
            cfg = ServeConfig(gallery_dir=str(gallery), models=[{**base, "max_batch_size": mbs}],
                              retriever_num_cpus=0.25, ingress_num_cpus=0.25, ingress_replicas=args.ingress_replicas,
                              allow_untrained=args.allow_untrained)
            check_fits(cfg, ray.cluster_resources())
            run_app(build_app(cfg), name="facerec", route_prefix="/")
            deadline = time.time() + 120
            while time.time() < deadline:  # reconfigure is applied asynchronously
                info = httpx.get(url + "/v1/models", timeout=60).json()["models"][0]
                if info["max_batch_size"] == mbs:
                    break
                time.sleep(0.5)
            else:
                raise SystemExit(f"Embedder did not switch to max_batch_size={mbs}")
            for c in args.concurrency:
                res = asyncio.run(closed_loop(url, queries, c, args.duration, args.warmup, args.model, args.k))
                row = {"batching": label, "max_batch_size": mbs, "concurrency": c, **res}
                rows.append(row)
                print(f"batching {label:3s} (max {mbs:2d}) c={c:3d}: {res['rps']:7.2f} req/s  p50 {res['p50_ms']:8.1f} ms  "
                      f"p99 {res['p99_ms']:8.1f} ms  mean batch {res['mean_batch']:.1f}  ingress embed-wait {res['ingress_embed_ms']:.0f} ms "
                      f"total {res['ingress_total_ms']:.0f} ms  2xx {res['ok_2xx']} 4xx {res['err_4xx']} "
                      f"5xx {res['err_5xx']} conn-err {res['conn_errors']}", flush=True)
            memory[label] = replica_memory(url)
            print(f"replica memory after batching {label}: {memory[label]}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    by = {(r["batching"], r["concurrency"]): r for r in rows}
    speed = {c: by[("on", c)]["rps"] / by[("off", c)]["rps"] if by[("off", c)]["rps"] else float("nan") for c in args.concurrency}
    no_5xx = all(r["err_5xx"] == 0 and r["conn_errors"] == 0 for r in rows)
    cmax = max(args.concurrency)
    load = os.getloadavg()
    header = (
        f"# bench_serve: model {args.model}, {len(queries)} query photos from {qsource}, k={args.k}\n\n"
        f"- command: `python benchmarks/bench_serve.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n"
        f"- {args.duration:.0f} s measured (+{args.warmup:.0f} s warm-up) per cell; batched = max_batch_size "
        f"{args.batch_size}, batch_wait {args.batch_wait_ms:g} ms; unbatched = max_batch_size 1\n"
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, load average at the end {load[0]:.1f} "
        f"(other jobs share the CPUs); Embedder replica {model_cpus:g} CPUs, GPUs {args.num_gpus:g}\n"
        f"- Serve environment: {' '.join(f'{k}={v}' for k, v in serve_env.items())}\n"
        f"- throughput ratio batched/unbatched: " + ", ".join(f"c={c}: {speed[c]:.2f}x" for c in args.concurrency) + "\n"
        f"- targets: no 5xx: {'PASS' if no_5xx else 'FAIL'}; c={cmax} batched >= 1.5x unbatched: "
        f"{'PASS' if speed[cmax] >= 1.5 else 'FAIL'} ({speed[cmax]:.2f}x)"
    )
    stack = None
    if baseline:
        best = max(by[(lbl, cmax)]["rps"] for lbl, _ in settings)
        stack = best / baseline["images_per_s"]
        header += (f"\n- in-process baseline (same per-request steps, one process, one photo at a time): "
                   f"{baseline['images_per_s']:.2f} images/s; c={cmax} requests/s (best setting) / baseline = "
                   f"{stack:.2f}x (target >= 0.75x: {'PASS' if stack >= 0.75 else 'FAIL'})")
    for lbl, mem in memory.items():
        for name, m in mem.items():
            header += (f"\n- {name} replica after batching {lbl}: RSS {m['rss_mb']:.0f} MB, peak {m['peak_mb']:.0f} MB "
                       f"(target <= 600 MB: {'PASS' if (m['peak_mb'] or 1e9) <= 600 else 'FAIL'})")
    md = markdown(rows, header)
    print("\n" + md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from facerec.io import atomic_write_text

    with open(out.with_suffix(".csv.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(out.with_suffix(".csv.tmp"), out.with_suffix(".csv"))
    atomic_write_text(out.with_suffix(".md"), md)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"rows": rows, "speedup": speed, "no_5xx": no_5xx,
                                                            "baseline": baseline, "stack_ratio": stack,
                                                            "memory": memory}, indent=2))
    print(f"wrote {out.with_suffix('.csv')}, {out.with_suffix('.md')}")
    return 0 if no_5xx else 1


if __name__ == "__main__":
    sys.exit(main())
