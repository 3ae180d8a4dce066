"""The command layer: ``facerec`` (:mod:`~facerec.cli.main`, the command table), the options and
error reporting every command shares (:mod:`~facerec.cli.common`), and one module per command
(``synth``, ``preprocess``, ``train_sweep``, ``build_index``, ``evaluate``, ``calibrate``,
``cluster``, ``serve``, ``run``; ``gallery`` behind ``python -m facerec.gallery``). It sits on top:
no library module imports it (tests/test_layering.py); ``pipelines/*.py`` and the console script do.
"""

from facerec.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
