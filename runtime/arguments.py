"""Command-line parsers whose ``--help`` teaches: every default shown, and worked examples.

Every subcommand builds its parser with ``command_parser`` and calls ``show_defaults`` once
its arguments are added, so ``imgsearch <command> --help`` ends with lines a user can copy.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help; the description and examples keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (
            action.nargs == 0  # on/off flags: "False" says nothing
            or action.default is None
            or action.default == ""  # "not set"
            or "default" in (action.help or "")  # the help already says what happens
        ):
            return action.help
        return super()._get_help_string(action)


def command_parser(
    prog: str, description: str, examples: Sequence[str], **kwargs
) -> argparse.ArgumentParser:
    """An ArgumentParser for one command, ``examples`` listed after the options."""
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples)
    paragraphs = description.strip().split("\n\n")  # kept as written, each one wrapped
    text = "\n\n".join(textwrap.fill(" ".join(p.split()), 79) for p in paragraphs)
    return argparse.ArgumentParser(
        prog=prog, description=text, epilog=epilog, formatter_class=_Formatter, **kwargs
    )


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give options without help text a "(default: X)" line too.

    ArgumentDefaultsHelpFormatter only appends defaults to options that have help text; an
    option such as ``--port`` with a default of 8080 and no help would show nothing. (On/off
    flags and options that default to "not set" show no default: it would only say False/None.
    Help that already explains its default keeps its own words.)
    """
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if (
            action.help is None
            and action.option_strings
            and not any(action.default is unset for unset in (None, False, argparse.SUPPRESS))
            and action.default != ""
        ):
            action.help = "(default: %(default)s)"
    return parser
