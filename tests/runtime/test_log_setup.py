"""``runtime.log_setup``: flags, levels, the known-harmless filter and the JSON format."""

from __future__ import annotations

import io
import json
import logging
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from runtime import log_setup
from runtime.log_setup import LogFlags, configure_logging, split_log_flags

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide state; put it back for the next test."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    levels = {name: logging.getLogger(name).level for name in log_setup.OUR_PACKAGES}
    with warnings.catch_warnings():
        yield
    for handler in [h for h in root.handlers if h not in saved[0]]:
        root.removeHandler(handler)
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.parametrize(
    ("argv", "flags", "rest"),
    [
        (["index", "--corpus", "c"], LogFlags(0, "text"), ["index", "--corpus", "c"]),
        (["-v", "index", "-v"], LogFlags(2, "text"), ["index"]),
        (["index", "-vv", "--verbose"], LogFlags(2, "text"), ["index"]),  # capped at 2
        (["-q", "search", "--quiet"], LogFlags(-1, "text"), ["search"]),
        (["--log-format", "json", "eval"], LogFlags(0, "json"), ["eval"]),
        (["eval", "--log-format=json", "-k", "3"], LogFlags(0, "json"), ["eval", "-k", "3"]),
        # Not ours: a flag that only starts like one stays with the command.
        (
            ["search", "-k", "5", "--value", "-vx"],
            LogFlags(0, "text"),
            ["search", "-k", "5", "--value", "-vx"],
        ),
    ],
)
def test_log_flags_are_taken_from_anywhere_and_the_rest_is_left_alone(argv, flags, rest):
    assert split_log_flags(argv) == (flags, rest)


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="--log-format must be one of"):
        split_log_flags(["--log-format", "xml"])


def test_our_packages_are_the_floor_plans_packages():
    lint = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(log_setup.OUR_PACKAGES) == set(lint["root_packages"])


def _emit_everything():
    logging.getLogger("pipelines.index_job").info("our step")
    logging.getLogger("pipelines.index_job").debug("our detail")
    logging.getLogger("apache_beam.runners").info("their chatter")
    logging.getLogger("apache_beam.runners").warning("their warning")
    logging.getLogger().warning(
        "Resource module is not available for current platform, memory usage cannot be fetched."
    )
    logging.getLogger("apache_beam.typehints.native_type_compatibility").info(
        'Converting string literal type hint to Any: "str"'
    )


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [
        (-1, {"their warning"}),
        (0, {"our step", "their warning"}),
        (1, {"our step", "our detail", "their chatter", "their warning"}),
        (2, {"our step", "our detail", "their chatter", "their warning",
             "Resource module is not available for current platform, memory usage cannot be "
             "fetched.", 'Converting string literal type hint to Any: "str"'}),
    ],
)  # fmt: skip
def test_levels_and_the_harmless_filter_follow_the_verbosity(verbosity, shown, restore_logging):
    stream = io.StringIO()
    configure_logging(LogFlags(verbosity, "json"), stream)
    _emit_everything()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {r["message"] for r in records} == shown
    assert all(set(r) >= {"time", "severity", "logger", "message"} for r in records)


def test_a_second_configure_replaces_ours_and_keeps_other_handlers(restore_logging):
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LogFlags(), first)
    configure_logging(LogFlags(), second)
    logging.getLogger("serving.app").info("once")
    assert first.getvalue() == "" and second.getvalue().count("once") == 1
    assert other in logging.getLogger().handlers
    logging.getLogger().removeHandler(other)


def test_python_warnings_go_through_the_handler_unless_known_harmless(restore_logging):
    stream = io.StringIO()
    configure_logging(LogFlags(), stream)
    warnings.warn("something real", UserWarning, stacklevel=1)
    warnings.warn(
        "Compiled the loaded model, but the compiled metrics have yet to be built.",
        UserWarning,
        stacklevel=1,
    )
    text = stream.getvalue()
    assert "something real" in text and "compiled metrics" not in text


def test_tensorflow_cpp_level_is_set_before_tensorflow_loads(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    log_setup.quiet_native_logs(0)
    assert log_setup.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # the user's choice wins by default
    log_setup.quiet_native_logs(0)
    assert log_setup.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    log_setup.quiet_native_logs(2)  # ... and -vv wins over it
    assert log_setup.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
