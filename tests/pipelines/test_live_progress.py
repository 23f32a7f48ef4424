"""The local index run's status line: counted by the job's own DoFns, drawn only on a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from pipelines import index_job, live_progress
from pipelines.live_progress import status_line
from tests.index_args import fake_index_args


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def info_level():
    logger = logging.getLogger("pipelines")
    saved = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(saved)


def test_status_line():
    now = {"listed": 100, "hashed": 80, "encoded": 40}
    assert status_line(now, None) == "listed 100 · hashed 80 · encoded 40"
    assert status_line(now, 20.0) == "listed 100 · hashed 80 · encoded 40 · 20 images/s · eta 3s"
    done = {"listed": 100, "hashed": 100, "encoded": 100}
    assert status_line(done, 4.0) == "listed 100 · hashed 100 · encoded 100 · 4 images/s"
    slow = {"listed": 10_000, "hashed": 10_000, "encoded": 100}
    assert status_line(slow, 50.0).endswith("eta 3m 18s")


def test_a_real_run_draws_its_counts_on_a_terminal(tmp_path, coco_photos, info_level):
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in coco_photos[:5]:
        (photos / photo.name).write_bytes(photo.read_bytes())
    terminal = _Terminal()
    with live_progress.live_progress(terminal, interval_s=0.05):
        index_job.run(fake_index_args(photos, tmp_path / "out", "p1"))
    out = terminal.getvalue()
    final = out.rsplit("\r\x1b[K", 1)[1]  # the line left on the terminal
    assert final.startswith("listed 5 · hashed 5 · encoded 5") and final.endswith("\n")
    assert out.startswith("\r\x1b[K")


def test_nothing_is_drawn_off_a_terminal_or_when_quiet(info_level):
    log = io.StringIO()
    with live_progress.live_progress(log, interval_s=0.01):
        live_progress.bump("listed", 3)
    assert log.getvalue() == ""
    logging.getLogger("pipelines").setLevel(logging.WARNING)  # -q
    terminal = _Terminal()
    with live_progress.live_progress(terminal, interval_s=0.01):
        live_progress.bump("listed", 3)
    assert terminal.getvalue() == ""
