"""The index job over a hostile corpus (``tests/hostile_corpus.py``), run once as users run it.

Invariant, checked per input: every input appears exactly once across the table, the
duplicates and the dead letters; each bad kind is a dead letter at its stage with its specific
reason; every good image is indexed. The job runs in a subprocess (real DirectRunner, real
Parquet, real ScaNN, ``--encoder fake``) so its peak RSS can be measured with the bombs in.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from index.table import parquet_files
from serving.searcher import ImageSearcher
from tests.hostile_corpus import (
    DEAD_LETTER,
    DUPLICATE,
    TABLE,
    HostileCorpus,
    HostileServer,
    write_hostile_corpus,
)
from tests.index_args import fake_index_args

REPO = Path(__file__).resolve().parents[2]
# Peak RSS of the whole job process (Python, Beam, pyarrow, ScaNN). A decoder that trusted the
# bombs' headers would need 1.6e9..4.2e9 pixels (gigabytes) for one of them.
MAX_RSS_MB = 1200
# Runs the job in-process and prints its own peak RSS: VmHWM of /proc/self/status (KiB). Not
# getrusage's ru_maxrss, which survives exec: a child forked from a pytest process that has
# loaded TensorFlow would report the parent's size (1.5-3.5 GB seen), not the job's.
_RUN_AND_MEASURE = (
    "import json, re, sys\n"
    "from pipelines import index_job\n"
    "result = index_job.run(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    "print('RESULT ' + json.dumps({'counts': result.counts, 'max_rss_kb': peak}))\n"
    # The entry points' own end (see runtime.process_exit), not the interpreter's teardown.
    "from runtime.process_exit import exit_process\n"
    "exit_process(0)\n"
)


def run_index_job_measured(corpus: Path, out: Path, *extra: str) -> dict:
    args = fake_index_args(
        corpus,
        out,
        "hostile-1",
        # Small enough that the endless body stops early, large enough for every real photo
        # and the 10 MB slow PNG.
        "--max_download_bytes",
        str(12 * 2**20),
        "--download_timeout_s",
        "0.5",
        "--download_retries",
        "1",
        # Real photos decode in milliseconds; the slow PNG takes seconds (tests/hostile_corpus).
        "--decode_timeout_s",
        "1",
        *extra,
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _RUN_AND_MEASURE, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _rows(folder: Path) -> list[dict]:
    files = parquet_files(str(folder))
    return pq.ParquetDataset(files).read().to_pylist() if files else []


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, coco_photos):
    folder = tmp_path_factory.mktemp("hostile")
    server = HostileServer().start()
    try:
        corpus = write_hostile_corpus(folder, server, coco_photos[:4])
        out = folder / "out"
        measured = run_index_job_measured(corpus.manifest, out)
    finally:
        server.close()
    outputs = {
        TABLE: _rows(out / "table"),
        DUPLICATE: _rows(out / "duplicates"),
        DEAD_LETTER: _rows(out / "dead_letters"),
    }
    return corpus, out, measured, outputs


def test_every_input_appears_exactly_once(hostile_run) -> None:
    corpus, _, measured, outputs = hostile_run
    seen = collections.Counter(row["uri"] for rows in outputs.values() for row in rows)
    expected = {item.uri for item in corpus.inputs}
    assert set(seen) == expected, (
        f"missing: {sorted(expected - set(seen))}; unexpected: {sorted(set(seen) - expected)}"
    )
    assert [uri for uri, n in seen.items() if n > 1] == []
    counts = measured["counts"]
    assert counts["inputs"] == len(corpus.inputs)
    assert counts["indexed"] + counts["duplicates"] + counts["dead_letters"] == len(corpus.inputs)


def test_each_input_has_its_expected_outcome_and_specific_reason(hostile_run) -> None:
    corpus, _, _, outputs = hostile_run
    where = {row["uri"]: (outcome, row) for outcome, rows in outputs.items() for row in rows}
    kinds = corpus.by_kind()
    wrong = []
    for item in corpus.inputs:
        outcome, row = where[item.uri]
        if outcome != item.expect:
            wrong.append(f"{item.kind}: expected {item.expect}, got {outcome} {row}")
        elif outcome == DEAD_LETTER and (
            row["stage"] != item.stage or not re.search(item.reason, row["reason"])
        ):
            wrong.append(
                f"{item.kind}: expected {item.stage} /{item.reason}/, "
                f"got {row['stage']} {row['reason']!r}"
            )
        elif outcome == DUPLICATE and row["kept_uri"] != kinds[item.kept_kind].uri:
            wrong.append(f"{item.kind}: kept {row['kept_uri']}, not {item.kept_kind}")
    assert wrong == []


def test_good_images_are_indexed_and_searchable(hostile_run) -> None:
    corpus, out, _, outputs = hostile_run
    good = sorted(item.uri for item in corpus.inputs if item.expect == TABLE)
    table = {row["uri"]: row for row in outputs[TABLE]}
    assert sorted(table) == good
    assert len(good) >= 20  # real photos, odd-but-valid formats, odd names, URLs
    searcher = ImageSearcher.load(str(out))  # verifies every file against the manifest
    for uri in good:
        row = table[uri]
        assert row["width"] >= 8 and row["height"] >= 8
        # Ties are possible (the GIF and the WebP share a first frame): look in the top 3.
        hits = searcher.search_vector(row["embedding"], 3)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert uri in [hit.uri for hit in hits]
    # The duplicate's kept row names its copies, so a search result can show them all.
    dup = corpus.by_kind()["duplicate_bytes"]
    kept = corpus.by_kind()[dup.kept_kind]
    assert table[kept.uri]["duplicate_uris"] == [dup.uri]


def test_memory_stays_bounded_with_bombs_in_the_corpus(hostile_run) -> None:
    corpus, _, measured, _ = hostile_run
    assert {"png_bomb", "jpeg_bomb", "gif_bomb", "moderate_png_bomb"} <= set(corpus.by_kind())
    peak_mb = measured["max_rss_kb"] / 1024
    print(f"hostile corpus: {len(corpus.inputs)} inputs, job peak RSS {peak_mb:.0f} MB")
    assert peak_mb < MAX_RSS_MB


def test_folder_corpus_lists_every_local_file_once(tmp_path, coco_photos) -> None:
    """The same files as a plain folder corpus (no manifest, no URLs): the FIFO, the folder
    named like a photo and the dangling link are each accounted for and none stops the job."""
    corpus: HostileCorpus = write_hostile_corpus(tmp_path, None, coco_photos[:1])
    from pipelines import index_job

    out = tmp_path / "out"
    result = index_job.run(
        fake_index_args(corpus.photos_dir, out, "hostile-folder", "--decode_timeout_s", "1")
    )
    seen = collections.Counter(
        row["uri"]
        for folder in ("table", "duplicates", "dead_letters")
        for row in _rows(out / folder)
    )
    local = {item.uri: item for item in corpus.inputs if item.local}
    # A folder listing yields files only: the directory named album.jpg is no input here. The
    # dangling link, which Beam's listing skips, is a read dead letter instead of vanishing.
    listed = set(local) - {corpus.by_kind()["directory_named_jpg"].uri}
    assert set(seen) == listed and max(seen.values()) == 1
    table = {row["uri"] for row in _rows(out / "table")}
    assert table == {uri for uri, item in local.items() if item.expect == TABLE}
    assert result.counts["inputs"] == len(listed)
    dead = {row["uri"]: row for row in _rows(out / "dead_letters")}
    link = dead[corpus.by_kind()["dangling_symlink"].uri]
    assert (link["stage"], link["reason"]) == (
        "read",
        "dangling symlink (its target does not exist)",
    )
