"""training.progress: plain lines off a terminal (fake clock), tqdm on one, nothing when off."""

from __future__ import annotations

import io
import logging

import pytest

from training import progress as progress_module
from training.progress import Progress, format_duration, progress

LOGGER = "training.progress"


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_plain_lines_every_tenth_at_most_every_five_seconds(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    for _ in progress(
        range(100), desc="encoding", unit="caption", stream=io.StringIO(), clock=clock
    ):
        clock.now += 1.0  # 1 s per item: a tenth every 10 s, more than the 5 s minimum
    lines = _lines(caplog)
    assert lines[0] == "encoding: 10/100 (10%), 1.0 caption/s, eta 1m 30s"
    assert lines[1].startswith("encoding: 20/100 (20%)")
    assert len(lines) == 11  # ten tenths, then the closing line
    assert lines[-1] == "encoding: 100/100 done in 1m 40s (1.0 caption/s)"


def test_plain_lines_heartbeat_without_a_total(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()

    def endless():
        yield from range(10)

    for _ in progress(endless(), desc="reading", unit="row", stream=io.StringIO(), clock=clock):
        clock.now += 12.0  # a line after 30 s without one: after items 3, 6 and 9
    lines = _lines(caplog)
    assert lines[0] == "reading: 3 row, 12.0 s/row, 36s so far"
    assert len(lines) == 4 and lines[-1].startswith("reading: 10 done in 2m 00s")


def test_a_quick_loop_stays_silent(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    for _ in progress(range(1000), desc="quick", stream=io.StringIO(), clock=clock):
        clock.now += 0.001
    assert _lines(caplog) == []


def test_break_counts_the_item_and_closes_with_the_postfix(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    epochs = progress(range(1, 31), desc="dual", unit="epoch", stream=io.StringIO(), clock=clock)
    for epoch in epochs:
        clock.now += 60.0
        epochs.set_postfix(f"loss {1 / epoch:.3f}")
        if epoch == 4:
            break  # early stopping
    lines = _lines(caplog)
    assert lines[0] == "dual: 1/30 (3%), 60.0 s/epoch, eta 29m 00s, loss 1.000"
    assert lines[-1] == "dual: 4/30 done in 4m 00s (60.0 s/epoch), loss 0.250"
    assert epochs.n == 4


def test_manual_updates(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    with Progress(total=640, desc="activations", unit="photo", stream=io.StringIO(),
                  clock=clock) as bar:  # fmt: skip
        for _ in range(10):
            clock.now += 10.0
            bar.update(64)
    assert _lines(caplog)[0] == "activations: 64/640 (10%), 6.4 photo/s, eta 1m 30s"


def test_tty_draws_a_tqdm_bar(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    stream = TtyStream()
    items = progress(range(3), desc="epochs", unit="epoch", stream=stream)
    assert list(items) == [0, 1, 2]
    drawn = stream.getvalue()
    assert "epochs" in drawn and "3/3" in drawn and "epoch/s" in drawn
    assert _lines(caplog) == []  # the bar, not log lines


def test_tty_bar_keeps_log_lines(capsys) -> None:
    """While a bar is drawn, console log lines go through tqdm.write instead of tearing it."""
    root = logging.getLogger()
    handler = logging.StreamHandler(__import__("sys").stderr)
    root.addHandler(handler)
    old_level = logging.getLogger(LOGGER).level
    logging.getLogger(LOGGER).setLevel(logging.INFO)
    try:
        stream = TtyStream()
        for step in progress(range(2), desc="steps", stream=stream):
            progress_module.note(f"news {step}")
        assert root.handlers[-1] is handler  # restored after the bar
    finally:
        root.removeHandler(handler)
        logging.getLogger(LOGGER).setLevel(old_level)
    assert "news 0" in capsys.readouterr().err


@pytest.mark.parametrize("tty", [False, True])
def test_disabled_prints_nothing(caplog, tty: bool) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    stream = TtyStream() if tty else io.StringIO()
    clock = FakeClock()
    for _ in progress(range(50), desc="off", stream=stream, clock=clock, disable=True):
        clock.now += 100.0
    assert stream.getvalue() == "" and _lines(caplog) == []


def test_quiet_when_the_logger_is_above_info(caplog) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    stream = TtyStream()
    bar = progress(range(5), desc="quiet", stream=stream)
    assert bar.disabled and list(bar) == list(range(5))
    progress_module.note("not shown")
    assert stream.getvalue() == "" and _lines(caplog) == []


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.4, 45, 259, 7500)] == ["0s", "45s", "4m 19s", "2h 05m"]
