"""``imgsearch eval clicks``: CTR, MRR of clicks and per-version figures, computed by hand."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from evaluation import clicks, eval_job
from serving.event_log import EventLimits, parse_event
from serving.event_writer import EventWriter

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def _view(version: str, minute: int) -> dict:
    return {"kind": "view", "version": version, "rank": None,
            "received_at": T0 + dt.timedelta(minutes=minute)}  # fmt: skip


def _click(version: str, rank: int, minute: int) -> dict:
    return {"kind": "click", "version": version, "rank": rank,
            "received_at": T0 + dt.timedelta(minutes=minute)}  # fmt: skip


# v1: 4 views, clicks at ranks 1, 2, 4 -> CTR 3/4, MRR (1 + 1/2 + 1/4) / 3 = 7/12.
# v2 (first seen later): 2 views, clicks at ranks 1, 1 -> CTR 1, MRR 1.
EVENTS = [
    _view("v1", 0), _click("v1", 1, 1), _view("v1", 2), _click("v1", 2, 3), _view("v1", 4),
    _view("v2", 5), _click("v2", 1, 6), _view("v1", 7), _click("v1", 4, 8), _view("v2", 9),
    _click("v2", 1, 10),
]  # fmt: skip


def test_click_stats_by_hand() -> None:
    overall = clicks.click_stats(EVENTS)
    assert (overall.views, overall.clicks, overall.clicks_on_first) == (6, 5, 3)
    assert overall.click_through_rate == pytest.approx(5 / 6)
    assert overall.mrr == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 + 1) / 5)


def test_per_version_in_order_of_first_event_and_compared() -> None:
    shuffled = EVENTS[::-1]  # the order of the files does not matter, the times do
    versions = clicks.per_version(shuffled)
    assert list(versions) == ["v1", "v2"]
    v1, v2 = versions["v1"], versions["v2"]
    assert (v1.views, v1.clicks, v1.click_through_rate) == (4, 3, 0.75)
    assert v1.mrr == pytest.approx(7 / 12)
    assert (v2.views, v2.clicks, v2.click_through_rate, v2.mrr) == (2, 2, 1.0, 1.0)
    delta = clicks.compare(v2, v1)
    assert delta["click_through_rate"] == pytest.approx(0.25)
    assert delta["mrr"] == pytest.approx(5 / 12)


def test_undefined_ratios_are_none() -> None:
    assert clicks.click_stats([]) == clicks.ClickStats(0, 0, None, None, 0)
    only_views = clicks.click_stats([_view("v1", 0)])
    assert only_views.click_through_rate == 0.0 and only_views.mrr is None
    only_clicks = clicks.click_stats([_click("v1", 2, 0)])
    assert only_clicks.click_through_rate is None and only_clicks.mrr == 0.5
    assert clicks.compare(only_clicks, only_views) == {"click_through_rate": None, "mrr": None}
    assert clicks.click_report([_view("v1", 0)])["latest_vs_previous"] is None


def _write_log(folder: Path) -> None:
    """v1: 2 text views, a text click at rank 2, a similar click at rank 1; v2: 1 view."""
    writer = EventWriter(str(folder), EventLimits(flush_events=2))
    bodies = [
        {"kind": "view", "query": "a dog", "version": "v1"},
        {"kind": "click", "query": "a dog", "version": "v1", "image_id": "a", "rank": 2},
        {"kind": "view", "query": "a cat", "version": "v1"},
        {"kind": "click", "query_kind": "similar", "query": "a", "version": "v1",
         "image_id": "b", "rank": 1},
        {"kind": "view", "query": "a cat", "version": "v2"},
    ]  # fmt: skip
    for body in bodies:
        writer.offer(parse_event(json.dumps(body).encode(), 4096), "v1")
    writer.flush()
    (folder / ".events-20260101T000000Z-00000000-000001.parquet.tmp-00ff").write_bytes(b"PAR1")


def test_the_command_reads_the_log(tmp_path: Path, capsys) -> None:
    _write_log(tmp_path)
    assert eval_job.main(["clicks", "--events", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 5  # the temp file is not read
    assert report["overall"] == {"views": 3, "clicks": 2, "click_through_rate": 2 / 3,
                                 "mrr": 0.75, "clicks_on_first": 1}  # fmt: skip
    assert [v["version"] for v in report["versions"]] == ["v1", "v2"]
    assert report["latest_vs_previous"] == {
        "newer": "v2", "older": "v1", "click_through_rate": -1.0, "mrr": None,
    }  # fmt: skip
    assert clicks.main(["--events", str(tmp_path), "--query-kind", "text", "--json"]) == 0
    text_only = json.loads(capsys.readouterr().out)
    assert text_only["overall"]["clicks"] == 1 and text_only["overall"]["mrr"] == 0.5
    assert clicks.main(["--events", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "v2 vs v1: CTR -1.000, MRR -" in table and table.splitlines()[1].startswith("all")


def test_an_empty_folder_is_exit_2(tmp_path: Path, capsys) -> None:
    assert clicks.main(["--events", str(tmp_path)]) == 2
    assert "no event files in" in capsys.readouterr().err


def test_help_shows_examples(capsys) -> None:
    with pytest.raises(SystemExit):
        clicks.main(["--help"])
    assert "imgsearch eval clicks --events click-log" in capsys.readouterr().out
