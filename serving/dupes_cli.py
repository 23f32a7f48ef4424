"""``imgsearch dupes``: the near-duplicate groups of an index version, as text, JSON or HTML.

    imgsearch dupes --index DIR                  (a publish root or an index folder)
    imgsearch dupes --index DIR --json
    imgsearch dupes --index DIR --html report.html [--limit 200]

The groups are the ones the index job wrote (``near_duplicates/``, listed in the manifest and
checked against it here); uris come from the index's ids files, so the table is not read. The
HTML report is one file: each group's thumbnails inline as small base64 JPEGs, the
representative first, every member's cosine to it.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.arguments import command_parser, show_defaults

TEMPLATE = Path(__file__).parent / "templates" / "dupes.html"


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "imgsearch dupes",
        "List the near-duplicate groups the index job found (crops, re-encodes, mirrors, "
        "brightness changes of one photo: images within the job's cosine threshold of their "
        "group's representative), largest first. Text by default; --json for scripts; --html "
        "writes a report with a thumbnail of every member.",
        [
            "imgsearch dupes --index out/root",
            "imgsearch dupes --index out/v1 --json",
            "imgsearch dupes --index out/root --html dupes.html --limit 100",
        ],
    )
    parser.add_argument("--index", required=True, help="a publish root or an index folder")
    parser.add_argument("--html", help="write an HTML report with thumbnails to this file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--limit", type=int, default=0, help="groups listed, largest first (0: all)"
    )
    parser.add_argument("--thumb-size", type=int, default=128, help="--html: thumbnails' side")
    return show_defaults(parser)


@dataclasses.dataclass(frozen=True)
class Member:
    image_id: str
    uri: str
    score: float  # cosine to the group's representative (1 for the representative)


@dataclasses.dataclass(frozen=True)
class Group:
    group: str
    representative: str
    members: list[Member]  # the representative first, then by score, best first


@dataclasses.dataclass(frozen=True)
class DupesReport:
    version: str
    index_dir: str
    threshold: float | None
    indexed: int
    images_grouped: int
    num_groups: int
    groups: list[Group] | None  # None: the version has no groups (not computed)

    @property
    def singletons(self) -> int:
        return self.indexed - self.images_grouped

    @property
    def shown(self) -> int:
        return len(self.groups or [])

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["singletons"] = self.singletons
        return data


def load_report(index: str, limit: int = 0) -> DupesReport:
    """The groups of the version at ``index`` (a publish root follows its pointer).

    Raises ``ManifestVerificationError`` when a near-duplicates file differs from the manifest.
    """
    from index.manifest import manifest_location, read_manifest, verify_files
    from index.near_duplicates import group_threshold, near_duplicate_files, read_group_table
    from index.publish import resolve_index
    from index.shards import read_ids
    from storage.files import join_path

    index_dir, version = resolve_index(index)
    out_dir, manifest_path = manifest_location(index_dir)
    manifest = read_manifest(manifest_path)
    indexed = manifest.shard_rows
    verify_files(out_dir, dataclasses.replace(manifest, files=near_duplicate_files(manifest)))
    table = read_group_table(out_dir, manifest)
    version = version or manifest.version
    if table is None:
        return DupesReport(version, out_dir, None, indexed, 0, 0, None)
    uri_of: dict[str, str] = {}
    for shard in manifest.shards:
        ids, uris = read_ids(join_path(out_dir, shard["ids_file"]))
        uri_of.update(zip(ids, uris, strict=True))
    by_group: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_group.setdefault(row["near_duplicate_group"], []).append(row)
    groups = []
    for group, rows in by_group.items():
        representative = rows[0]["representative"]
        rows.sort(key=lambda r: (r["image_id"] != representative, -r["score"], r["image_id"]))
        members = [Member(r["image_id"], uri_of.get(r["image_id"], ""), r["score"]) for r in rows]
        groups.append(Group(group, representative, members))
    groups.sort(key=lambda g: (-len(g.members), g.group))
    shown = groups[:limit] if limit else groups
    threshold = group_threshold(out_dir, manifest)
    return DupesReport(version, out_dir, threshold, indexed, table.num_rows, len(groups), shown)


def render_html(report: DupesReport, thumb_size: int) -> str:
    """The report as one HTML page, every member's thumbnail inline (base64 JPEG)."""
    import jinja2

    from serving.thumbnails import ThumbnailCache, ThumbnailError

    thumbnails = ThumbnailCache(thumb_size, entries=0)

    def figure(member: Member) -> dict[str, Any]:
        entry = dataclasses.asdict(member)
        try:
            jpeg = thumbnails.get(member.uri)
            entry["thumbnail"], entry["error"] = base64.b64encode(jpeg).decode("ascii"), ""
        except ThumbnailError as exc:  # a source moved or broken since indexing
            entry["thumbnail"], entry["error"] = "", f"no thumbnail: {exc}"
        return entry

    groups = [
        {"group": g.group, "representative": g.representative,
         "members": [figure(member) for member in g.members]}
        for g in report.groups or []
    ]  # fmt: skip
    template = jinja2.Environment(autoescape=True).from_string(TEMPLATE.read_text("utf-8"))
    page = dataclasses.replace(report, groups=None)
    return template.render(
        report={**dataclasses.asdict(page), "groups": groups, "singletons": report.singletons,
                "shown": report.shown},
        thumb_size=thumb_size,
    )  # fmt: skip


def main(argv: Sequence[str]) -> int:
    """Run ``imgsearch dupes``; -> the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    if not 16 <= args.thumb_size <= 1024:
        parser.error(f"--thumb-size must be in 16..1024, got {args.thumb_size}")
    from index.manifest import ManifestVerificationError

    try:
        report = load_report(args.index, args.limit)
    except ManifestVerificationError as exc:
        raise ValueError(str(exc)) from exc  # a damaged version: one clear line
    if args.html:
        from storage.files import write_bytes

        if report.groups is None:
            parser.exit(1, f"imgsearch dupes: {_no_groups(report)}\n")
        write_bytes(args.html, render_html(report, args.thumb_size).encode("utf-8"))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print(report)
        if args.html:
            print(f"wrote {args.html}")
    return 0


def _no_groups(report: DupesReport) -> str:
    return (
        f"index version {report.version} has no near-duplicate groups: it was indexed with "
        f"--near_duplicates off, or by a version of imgsearch without them"
    )


def _print(report: DupesReport) -> None:
    if report.groups is None:
        print(_no_groups(report))
        return
    threshold = "?" if report.threshold is None else f"{report.threshold:.3f}"
    print(
        f"index version {report.version}: {report.images_grouped} of {report.indexed} images in "
        f"{report.num_groups} near-duplicate groups (cosine >= {threshold}), "
        f"{report.singletons} singletons"
    )
    for number, group in enumerate(report.groups, start=1):
        print(
            f"\ngroup {number}: {len(group.members)} images, representative {group.representative}"
        )
        for member in group.members:
            mark = "  (representative)" if member.image_id == group.representative else ""
            print(f"  {member.score:.4f}  {member.image_id}  {member.uri}{mark}")
    if report.shown < report.num_groups:
        print(
            f"\n({report.num_groups - report.shown} smaller groups not shown: --limit 0 lists all)"
        )
    sys.stdout.flush()
