"""How commands start and fail: ``imgsearch`` and the ``python -m`` modules the DAGs run."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from runtime.lean_imports import skip_keras_extras
from runtime.log_setup import LogFlags, configure_logging, split_log_flags
from runtime.process_exit import exit_process, run_as_process

# What the commands raise for a problem with the user's input or machine, never for a bug:
# ValueError (flags, formats, mismatched models), missing or unreadable files and folders,
# KeyError (an unknown image id or model name).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


def report_user_error(prog: str, error: BaseException, flags: LogFlags) -> int:
    """One line saying what is wrong (the traceback too at -v); the exit status, 2."""
    if flags.verbosity > 0:
        traceback.print_exception(error)
    message = error.args[0] if isinstance(error, KeyError) and error.args else error  # no quotes
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def run_module_main(main: Callable[[list[str]], int | None]) -> NoReturn:
    """``python -m <module>``: logging from the line's ``-v``/``-q``/``--log-format``, then
    ``main(rest)`` with user errors in one line, then the end ``runtime.process_exit`` gives."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set when run with -m
    prog = f"python -m {spec.name}" if spec is not None else sys.argv[0]
    try:
        flags, rest = split_log_flags(sys.argv[1:])
    except ValueError as exc:
        exit_process(report_user_error(prog, exc, LogFlags()))
    configure_logging(flags)
    skip_keras_extras()

    def guarded() -> int | None:
        try:
            return main(rest)
        except USER_ERRORS as exc:
            return report_user_error(prog, exc, flags)

    run_as_process(guarded)
