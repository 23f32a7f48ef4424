"""``imgsearch eval clicks``: what users clicked, from the server's click log.

    imgsearch eval clicks --events DIR [--query-kind text] [--json]

Reads the finished Parquet files ``imgsearch serve --events DIR`` wrote (``serving.event_writer``;
temp files of an unfinished write are never read) and reports, overall and per index version
(oldest first, so the version just published reads against the one before):

- views: results pages shown (the page sends one ``view`` per page of results);
- clicks: result links followed (a thumbnail or "more like this");
- click-through rate: clicks / views (clicks per results page; above 1 when users open
  several results of a page);
- MRR of clicks: the mean of 1/rank over clicks (1.0: every click on the first result).

The aggregation (``click_stats``, ``per_version``, ``compare``) is pure, over event rows.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence

from runtime.arguments import command_parser, show_defaults
from serving.event_log import QUERY_KINDS
from serving.event_writer import event_files, read_events


@dataclasses.dataclass(frozen=True)
class ClickStats:
    """Views, clicks and their ratios for one group of events (None where undefined)."""

    views: int
    clicks: int
    click_through_rate: float | None
    mrr: float | None
    clicks_on_first: int  # clicks on rank 1

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def click_stats(events: Iterable[Mapping]) -> ClickStats:
    """``ClickStats`` over event rows (``kind``, and ``rank`` for clicks)."""
    views, ranks = 0, []
    for event in events:
        if event["kind"] == "view":
            views += 1
        elif event["kind"] == "click":
            ranks.append(int(event["rank"]))
    return ClickStats(
        views=views,
        clicks=len(ranks),
        click_through_rate=len(ranks) / views if views else None,
        mrr=sum(1.0 / rank for rank in ranks) / len(ranks) if ranks else None,
        clicks_on_first=sum(rank == 1 for rank in ranks),
    )


def per_version(events: Iterable[Mapping]) -> dict[str, ClickStats]:
    """``ClickStats`` per index version the page showed, versions in order of first event."""
    groups: dict[str, list[Mapping]] = {}
    for event in sorted(events, key=lambda e: e["received_at"]):
        groups.setdefault(event["version"], []).append(event)
    return {version: click_stats(rows) for version, rows in groups.items()}


def compare(newer: ClickStats, older: ClickStats) -> dict[str, float | None]:
    """``newer`` minus ``older`` for the click-through rate and MRR (None where undefined)."""

    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return {
        "click_through_rate": delta(newer.click_through_rate, older.click_through_rate),
        "mrr": delta(newer.mrr, older.mrr),
    }


def click_report(events: Sequence[Mapping]) -> dict:
    """The report: overall, per version (oldest first), and the last version vs the one before."""
    versions = per_version(events)
    names = list(versions)
    latest = (
        {
            "newer": names[-1],
            "older": names[-2],
            **compare(versions[names[-1]], versions[names[-2]]),
        }
        if len(names) >= 2
        else None
    )
    return {
        "events": len(events),
        "overall": click_stats(events).to_json(),
        "versions": [{"version": name, **stats.to_json()} for name, stats in versions.items()],
        "latest_vs_previous": latest,
    }


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def summary(report: dict) -> str:
    """The report as a few aligned lines."""
    rows = [report["overall"] | {"version": "all"}, *report["versions"]]
    lines = [f"{'version':<24} {'views':>7} {'clicks':>7} {'CTR':>7} {'MRR':>7} {'@1':>5}"]
    for row in rows:
        lines.append(
            f"{row['version']:<24} {row['views']:>7} {row['clicks']:>7} "
            f"{_number(row['click_through_rate']):>7} {_number(row['mrr']):>7} "
            f"{row['clicks_on_first']:>5}"
        )
    latest = report["latest_vs_previous"]
    if latest is not None:
        lines.append(
            f"{latest['newer']} vs {latest['older']}: CTR "
            f"{_number(latest['click_through_rate'], True)}, MRR {_number(latest['mrr'], True)}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """CLI entry: 0 with the report printed; 2 when the folder holds no event files."""
    parser = command_parser(
        "imgsearch eval clicks",
        "Click-through rate and MRR of clicks from the click log `imgsearch serve --events DIR` "
        "writes, overall and per index version (the last version against the one before).",
        [
            "imgsearch eval clicks --events click-log",
            "imgsearch eval clicks --events gs://bucket/click-log --query-kind text --json",
        ],
    )
    parser.add_argument("--events", required=True, help="the click-log folder or gs:// prefix")
    parser.add_argument(
        "--query-kind", choices=QUERY_KINDS, help="only events of this query kind (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = show_defaults(parser).parse_args(argv)
    if not event_files(args.events):
        print(f"imgsearch eval clicks: error: no event files in {args.events}", file=sys.stderr)
        return 2
    events = read_events(args.events).to_pylist()
    if args.query_kind:
        events = [e for e in events if e["query_kind"] == args.query_kind]
    report = click_report(events)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else summary(report))
    return 0
