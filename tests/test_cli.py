"""The console script's surface: every subcommand of the README exists and has help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slicerank.cli import build_parser, main

COMMANDS = (
    "synth",
    "ingest",
    "provision",
    "scheduler",
    "backend",
    "worker",
    "train",
    "simulate",
    "analyze",
    "bench",
    "demo",
)
BENCH_TARGETS = ("ingest", "engine", "service", "train", "analysis", "demo")


def _subcommands(parser) -> dict:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_documented_command_is_there():
    assert set(COMMANDS) <= set(_subcommands(build_parser()))


def test_every_bench_target_is_there():
    bench = _subcommands(build_parser())["bench"]
    assert set(BENCH_TARGETS) <= set(_subcommands(bench))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: slicerank" in capsys.readouterr().out


def test_help_does_not_import_torch():
    # `slicerank --help` must stay fast: heavy libraries load inside the handlers.
    code = "import sys; from slicerank.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
