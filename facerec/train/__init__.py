"""Metric-learning training on Ray Train, and sweeps over losses x backbones on Ray Tune.

- :class:`TrainConfig` / :class:`SweepConfig` (``facerec.train.config``): validated settings.
- :func:`train` (``facerec.train.trainer``): one TorchTrainer run -> ``RUN/<trial>/best``.
- :func:`run_sweep` (``facerec.train.sweep``): the Tune grid -> ``RUN/sweep_summary.{md,csv}``, plots.
- :func:`build_sweep` / :data:`PRESETS` (``facerec.train.presets``): ``smoke``, ``seed``, ``cpu``.
"""

from facerec.train.config import SAMPLINGS, SweepConfig, TrainConfig
from facerec.train.presets import PRESETS, build_sweep
from facerec.train.sweep import run_sweep
from facerec.train.trainer import train

__all__ = ["PRESETS", "SAMPLINGS", "SweepConfig", "TrainConfig", "build_sweep", "run_sweep", "train"]
