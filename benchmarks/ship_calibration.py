"""Make the calibration a pretrained model ships with (package data) from a ``facerec calibrate``
run, so /v1/verify and search's "same person" work on a fresh install:

    facerec calibrate --model dlib_resnet --lfw ../shared/data/lfw-sample --out results/calibration-dlib-lfw
    python benchmarks/ship_calibration.py --from results/calibration-dlib-lfw/calibration.json

writes ``facerec/models/calibrations/<pretrained name>.json`` (``{"calibration": ...}``, the shape of
``measured.json``): the record as measured -- model_id, input kind, the detector's settings, the
data's name, version and fingerprint, the date, the command, facerec's version and commit -- less
what names this machine (the report files beside the cached checkpoint, the data's absolute
paths), plus ``shipped`` (when and from what it was made). :func:`facerec.models.calibration.read_calibration`
serves it for the same weights, input kind and detector when nothing was calibrated locally.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def shipped_record(cal: dict, source: str, name: str) -> dict:
    """The package-data form of calibration ``cal`` (read from ``source``) of pretrained ``name``."""
    out = {k: v for k, v in cal.items() if k not in ("files", "origin")}
    data = dict(out.get("data") or {})
    for key in ("path", "pairs_file"):  # this machine's folders: the name and fingerprints say which data
        if data.get(key):
            data[key] = Path(data[key]).name
    out["data"] = data
    out["shipped"] = {"date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                      "from": Path(source).name, "by": "benchmarks/ship_calibration.py", "pretrained": name}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", required=True,
                    help="calibration.json of `facerec calibrate --out`, or a checkpoint's measured.json")
    ap.add_argument("--name", default="dlib_resnet", help="the pretrained model it ships with (default dlib_resnet)")
    args = ap.parse_args(argv)

    from facerec.io import atomic_write_json
    from facerec.models.calibration import KEY, SHIPPED, thresholds
    from facerec.models.pretrained import PRETRAINED, pretrained_checkpoint
    from facerec.models.metadata import read_checkpoint_metadata

    raw = json.loads(Path(args.source).read_text())
    cal = raw.get(KEY, raw)  # measured.json holds it under "calibration"
    meta = read_checkpoint_metadata(pretrained_checkpoint(PRETRAINED.get(args.name).name))
    problems = []
    if cal.get("model_id") != meta["model_id"]:
        problems.append(f"model_id {cal.get('model_id')} is not {args.name}'s {meta['model_id']}")
    if (cal.get("data") or {}).get("source") != "lfw":
        problems.append("it was not measured on LFW pairs (the model card's LFW accuracy comes from it)")
    if not thresholds(cal) or not cal.get("impostors"):
        problems.append("it has no resolvable operating point or no impostor curve (re-run facerec calibrate)")
    if problems:
        print(f"ship_calibration: {args.source}: " + "; ".join(problems), file=sys.stderr)
        return 2
    target = SHIPPED / f"{args.name}.json"
    record = shipped_record(cal, args.source, args.name)
    atomic_write_json(target, {KEY: record})
    prov = record.get("provenance") or {}
    print(f"ship_calibration: {target}: {record['data']['name']} ({record['data'].get('data_version')}), measured "
          f"{record['date']} by `{prov.get('command')}` at facerec {prov.get('facerec_version')} "
          f"{(prov.get('commit') or '?')[:12]}{' (with uncommitted changes)' if prov.get('dirty') else ''}; "
          f"detector {record['data'].get('detector')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
