"""facerec.cli.common: the option groups every command shares, read back into the library's
configs, and the command table's modules."""

from __future__ import annotations

import importlib

import pytest

from facerec.cli.common import embedding_fields
from facerec.cli.main import COMMANDS

EMBEDDING_COMMANDS = ["build_index", "evaluate", "calibrate"]


def _required(command: str) -> list[str]:
    return {"build_index": ["--crops", "C", "--out", "O"], "evaluate": [],
            "calibrate": ["--model", "dlib_resnet", "--lfw", "L"]}[command]


@pytest.mark.parametrize("command", EMBEDDING_COMMANDS)
def test_one_embedding_option_group(command):
    """--batch-size/--num-actors/--gpu/--no-gpu parse alike in every command that embeds and give
    the fields of facerec.gallery.embed.EmbeddingOptions."""
    parse = importlib.import_module(f"facerec.cli.{command}").parse_args
    assert embedding_fields(parse(_required(command))) == {"batch_size": 64, "num_actors": None, "use_gpu": None}
    args = parse(_required(command) + ["--batch-size", "8", "--num-actors", "2", "--gpu"])
    assert embedding_fields(args) == {"batch_size": 8, "num_actors": 2, "use_gpu": True}
    assert embedding_fields(parse(_required(command) + ["--no-gpu"]))["use_gpu"] is False
    with pytest.raises(SystemExit):
        parse(_required(command) + ["--gpu", "--no-gpu"])  # one or the other


def test_every_command_module_is_in_the_cli_package():
    for name, (target, _) in COMMANDS.items():
        module, func = target.split(":")
        assert module.startswith("facerec.cli."), name
        assert callable(getattr(importlib.import_module(module), func)), name
