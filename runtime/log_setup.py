"""What a command prints on stderr: our own steps at INFO, other libraries only when they warn.

Without this a four-photo ``imgsearch index`` printed about 80 lines (Beam's typehint notes,
TensorFlow's CUDA and oneDNN banners, a cuInit error on a machine without a GPU, BatchElements'
timing dump) around the six that say what the job did. Entry points call ``configure_logging``
once, before anything imports TensorFlow; library modules only ever call ``logging.getLogger``.

Verbosity (``-q`` lowers it, each ``-v`` raises it):

====  ==========================  ===================  ==============================
 -1   our loggers WARNING         others WARNING       TensorFlow C++: fatal only
  0   our loggers INFO            others WARNING       TensorFlow C++: fatal only
  1   our loggers DEBUG           others INFO          TensorFlow C++: warnings, errors
  2   everything DEBUG, and the known-harmless messages below are shown too; TF C++: all
====  ==========================  ===================  ==============================

``--log-format json`` writes one JSON object per line with ``severity`` and ``message``, the
fields Cloud Logging (Dataflow, Cloud Composer's Airflow) parses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

# The project's own top-level packages (pyproject's import-linter root_packages; a test keeps
# the two lists equal). Their loggers say what a command is doing, so they keep INFO.
OUR_PACKAGES = (
    "imgsearch", "evaluation", "serving", "training", "pipelines", "models", "index", "ranking",
    "encoders", "storage", "runtime",
)  # fmt: skip

LOG_FORMATS = ("text", "json")

# Messages that are noise whatever the run, dropped by message rather than by muting a logger
# (which would also hide that logger's real warnings). Shown again at -vv.
KNOWN_HARMLESS = (
    # Beam's RunInference: its optional ModelManager import fails without torch, which leaves
    # `resource` unset too, so it warns on every batch that it cannot read this process's RSS.
    ("root", "Resource module is not available for current platform"),
    # Beam's typehint conversion, once per string annotation in every DoFn (about sixty a job).
    ("apache_beam.typehints.native_type_compatibility", "Converting string literal type hint"),
)

# Python warnings known to be harmless here, filtered by message (see KNOWN_HARMLESS).
_HARMLESS_WARNINGS = (
    # Keras, on loading a model saved without an optimizer (every encoder and joint model).
    r"Compiled the loaded model, but the compiled metrics have yet to be built",
    r"Skipping variable loading for optimizer",
)

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Marks the handler we installed, so a second configure (tests call cli.main many times)
# replaces ours and leaves everyone else's (pytest's capture handlers) alone.
_OURS = "_imgsearch_handler"


@dataclasses.dataclass(frozen=True)
class LogFlags:
    """The logging flags every command accepts, anywhere on its command line."""

    verbosity: int = 0
    log_format: str = "text"


def split_log_flags(argv: Sequence[str]) -> tuple[LogFlags, list[str]]:
    """Take ``-v``/``-vv``/``--verbose``, ``-q``/``--quiet`` and ``--log-format F`` out of argv.

    They may stand anywhere (``imgsearch -v index ...`` or ``imgsearch index ... -v``); the rest
    goes to the command unchanged. Raises ValueError for an unknown ``--log-format``.
    """
    verbosity, log_format, rest = 0, "text", []
    args = iter(argv)
    for arg in args:
        if arg in ("--verbose",) or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            verbosity += 1 if arg == "--verbose" else len(arg) - 1
        elif arg in ("-q", "--quiet"):
            verbosity -= 1
        elif arg == "--log-format" or arg.startswith("--log-format="):
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            if value not in LOG_FORMATS:
                raise ValueError(f"--log-format must be one of {LOG_FORMATS}, got {value!r}")
            log_format = value
        else:
            rest.append(arg)
    return LogFlags(max(-1, min(2, verbosity)), log_format), rest


_configured = LogFlags()


def current_flags() -> LogFlags:
    """The flags of the last ``configure_logging`` (for a child process to log the same way)."""
    return _configured


def configure_logging(flags: LogFlags = LogFlags(), stream: TextIO | None = None) -> None:
    """Install one stderr handler with the flags' levels and format (idempotent per process)."""
    global _configured
    _configured = flags
    quiet_native_logs(flags.verbosity)
    ours = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG, 2: logging.DEBUG}
    theirs = {-1: logging.WARNING, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if flags.log_format == "json" else _text_formatter())
    if flags.verbosity < 2:
        handler.addFilter(drop_known_harmless)
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(theirs[flags.verbosity])
    for package in OUR_PACKAGES:
        logging.getLogger(package).setLevel(ours[flags.verbosity])
    # warnings.warn goes through the same handler (and the JSON format) as everything else.
    logging.captureWarnings(True)
    if flags.verbosity < 2:
        for message in _HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message)


def quiet_native_logs(verbosity: int) -> None:
    """Set TensorFlow's C++ log level; it is read once, when TensorFlow loads.

    By default (and with -q) only fatal messages: TensorFlow reports its real failures to Python
    as exceptions, and what it logs on its own is banners and a cuInit error on every machine
    without a GPU. An explicit ``TF_CPP_MIN_LOG_LEVEL`` in the environment wins unless -v asks.
    """
    if "tensorflow" in sys.modules:
        return  # too late to change; happens only when a caller imported TensorFlow first
    level = {-1: "3", 0: "3", 1: "1", 2: "0"}[verbosity]
    if verbosity > 0:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = level
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", level)


def drop_known_harmless(record: logging.LogRecord) -> bool:
    """A logging filter: False for the records in ``KNOWN_HARMLESS``."""
    for name, prefix in KNOWN_HARMLESS:
        if record.name == name and str(record.msg).startswith(prefix):
            return False
    return True


def _text_formatter() -> logging.Formatter:
    return logging.Formatter(_TEXT_FORMAT)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, severity, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
