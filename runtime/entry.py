"""``python -m <module>`` entry points (the DAGs run the index and eval jobs this way)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from runtime.log_setup import configure_logging, split_log_flags
from runtime.process_exit import exit_process, run_as_process


def run_module_main(main: Callable[[list[str]], int | None]) -> NoReturn:
    """Logging from the command line's ``-v``/``-q``/``--log-format``, then ``main(rest)``,
    then the end ``runtime.process_exit`` gives a finished command."""
    try:
        flags, rest = split_log_flags(sys.argv[1:])
    except ValueError as exc:
        print(f"{sys.argv[0]}: error: {exc}", file=sys.stderr)
        exit_process(2)
    configure_logging(flags)
    run_as_process(lambda: main(rest))
