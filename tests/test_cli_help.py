"""Every command's --help prints its text (argparse formats help strings with %, so a stray
percent sign in one breaks `python -m fracture_lib --help`)."""

from __future__ import annotations

import argparse

import pytest

from fracture_lib.cli import build_parser, main


def _command_names() -> list[str]:
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return sorted(commands.choices)


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in _command_names())])
def test_help_of_every_command(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m fracture_lib")
    if argv == ["--help"]:
        assert "evaluate" in text and "95% intervals" in " ".join(text.split())


def test_a_percent_sign_reads_once_in_the_command_description(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95% intervals" in text and "%%" not in text
