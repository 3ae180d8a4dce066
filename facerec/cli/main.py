"""The ``facerec`` command: one subcommand per stage, each a thin front end over library code
(the same functions the ``pipelines/*.py`` scripts call).

    facerec data synth              generate the embedded synthetic CelebA-layout dataset
    facerec preprocess              photos -> face crops + Parquet table (Ray Data)
    facerec train-sweep             losses x backbones sweep (Ray Tune + Ray Train)
    facerec build-index             embed a gallery (Ray Data actors) and build its index
    facerec evaluate                the study's retrieval tables, verification accuracy
    facerec calibrate               same-person distance thresholds at fixed false accept rates
    facerec cluster                 photos -> people: face clustering on Ray (no labels needed)
    facerec serve                   the Ray Serve HTTP API and web page
    facerec run                     the whole chain end to end (synthetic data by default)
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> "module:function" taking argv and returning an exit code. A table, not an
# if/elif chain, so a stage is added in one line; each module is imported only when its command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "data synth": ("facerec.cli.synth:main", "generate the synthetic CelebA-layout dataset"),
    "preprocess": ("facerec.cli.preprocess:main", "crop faces on Ray Data, write crops.parquet"),
    "train-sweep": ("facerec.cli.train_sweep:main", "train a losses x backbones sweep on Ray Train/Tune"),
    "build-index": ("facerec.cli.build_index:main", "embed a gallery and build its index"),
    "evaluate": ("facerec.cli.evaluate:main", "reproduce the study's tables"),
    "calibrate": ("facerec.cli.calibrate:main", "verification thresholds at fixed false accept rates"),
    "cluster": ("facerec.cli.cluster:main", "cluster the faces of a photo folder into people on Ray"),
    "serve": ("facerec.cli.serve:main", "start the Ray Serve HTTP API and web page"),
    "run": ("facerec.cli.run:main", "the whole chain end to end"),
}


def _usage() -> str:
    width = max(len(k) for k in COMMANDS)
    lines = [f"  facerec {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: facerec COMMAND [options]   (facerec COMMAND --help for its options)\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    for words in (2, 1):
        name = " ".join(argv[:words])
        if name in COMMANDS:
            target = COMMANDS[name][0]
            module, func = target.split(":")
            return int(getattr(importlib.import_module(module), func)(argv[words:]) or 0)
    print(f"facerec: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
