"""Every subcommand's ``--help`` teaches: its defaults shown and examples to copy."""

from __future__ import annotations

import pytest

from imgsearch import cli

COMMANDS = [
    ["index"], ["search"], ["serve"], ["train", "joint"], ["train", "captioner"],
    ["train", "fusion"], ["eval"], ["eval", "score"], ["demo"], ["doctor"], ["publish"],
    ["rollback"], ["versions"], ["quantize"], ["words"], ["explain"], ["train", "hashing"],
    ["describe"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_defaults_and_examples(command, capsys):
    try:
        code = cli.main([*command, "--help"])
    except SystemExit as stop:  # argparse's own --help
        code = stop.code
    out = capsys.readouterr().out
    assert code == 0
    assert f"usage: imgsearch {' '.join(command)}" in out
    examples = out.split("examples:\n", 1)[1].splitlines()
    assert examples and all(line.startswith("  imgsearch ") for line in examples)
    assert any(line.startswith(f"  imgsearch {command[0]}") for line in examples)
    # Commands whose options all default to "not set" have no default to show.
    if command not in (["publish"], ["rollback"], ["eval", "score"]):
        assert "(default: " in out


def test_the_overview_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"imgsearch {name}" in out
