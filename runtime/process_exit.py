"""End a command-line process after its work, without the native libraries' teardown.

A job that has written its tables and printed its summary could still die at the very end
with ``terminate called without an active exception`` (SIGABRT, exit -6): a native thread pool
(Arrow's, apache/arrow#34314; TensorFlow's and ScaNN's are loaded too) torn down by the C++
static destructors while one of its workers is still alive. It is rare (once in a CI run, never
in 30 runs back to back here) and it turns a finished nightly run into a failed Airflow task.

So the entry points (``imgsearch``, ``python -m pipelines.index_job`` and the other modules the
DAGs run) finish through ``exit_process``: Python's own clean-up runs as usual (atexit handlers
such as ``logging.shutdown`` and temporary-directory finalizers, then flushed stdout/stderr),
and the process then ends with ``os._exit``, skipping interpreter finalization and the C++
destructors where that abort happens. It also spares the last garbage collection's walk over
every object alive (about a second once TensorFlow and a model are loaded).

Only for processes that are ending: library calls and tests call ``main(argv)`` and get its code.
"""

from __future__ import annotations

import atexit
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    """Run the atexit handlers, flush stdout and stderr, and end the process with ``code``."""
    try:
        # CPython's own exit path runs these first too; private, but stable since Python 3.0.
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken pipe: nothing left to save
                pass
        os._exit(code)


def run_as_process(main: Callable[[], int | None]) -> NoReturn:
    """Call ``main`` and end the process with its exit code, as ``sys.exit(main())`` would.

    ``SystemExit`` (argparse's usage errors) keeps its code; any other exception prints its
    traceback and exits 1, as an uncaught exception does.
    """
    try:
        code = _exit_code(main())
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BrokenPipeError:
        # `imgsearch ... | head`: the reader has gone. Nothing is wrong with the command, and
        # nothing more can be written; end as a process killed by SIGPIPE would, quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130  # the shell's code for "interrupted", 128 + SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_process(code)


def _exit_code(value: object) -> int:
    """``sys.exit``'s rules: None is 0, an int is itself, anything else is printed and is 1."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1
