"""Helpers and fixtures of the server tests.

The index versions they search (``serve_photos``, ``serve_models``, ``built_versions``) are
session fixtures in ``tests/conftest.py``, shared with the library API and client tests
(tests/imgsearch), so the whole suite builds them once.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from index.publish import version_dir, write_pointer
from tests.serving.query_load import SEARCH, SIMILAR, QueryLoad

JOINT_MODEL = "dual-serve-test"
FAKE_IMAGE_ID = "fake/v1"
FAKE_DIM = 64


def rewrite_column(version: Path, column: str, new_value) -> None:
    """Replace ``column`` in every Parquet file of a version folder that has it (the table, the
    index shards' ids, near-duplicate groups) by ``new_value(old)``: one mapping, so the files
    still agree. The manifest's checksums then fail: serve it with ``verify=False``."""
    import pyarrow.parquet as pq

    for path in sorted(version.rglob("*.parquet")):
        table = pq.read_table(path)
        if column not in table.column_names:
            continue
        values = [None if v is None else new_value(v) for v in table[column].to_pylist()]
        index = table.schema.get_field_index(column)
        pq.write_table(table.set_column(index, column, [values]), path)


def corrupt_a_table_file(version: Path) -> tuple[Path, bytes]:
    """Flip one byte of a version's table file (its manifest checksum then refuses the
    version); returns the file and its good bytes, to repair it with."""
    table_file = sorted((version / "table").glob("*.parquet"))[0]
    good = table_file.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    table_file.write_bytes(bytes(data))
    return table_file, good


def publish(root: Path, built: Path, version: str) -> Path:
    """Copy a built index into ``root`` as ``version`` and point ``latest.json`` at it."""
    target = Path(version_dir(str(root), version))
    shutil.copytree(built, target)
    write_pointer(str(root), version)
    return target


def publish_damaged_copy(root: Path, source: str, version: str) -> None:
    """Publish ``version``: a copy of ``source`` with one table file damaged, complete-looking
    (its manifest is there) but refused by the manifest check at load."""
    broken = root / "versions" / version
    shutil.copytree(root / "versions" / source, broken)
    corrupt_a_table_file(broken)
    write_pointer(str(root), version)


def wait_for(predicate, timeout_s: float = 60.0) -> None:
    """Poll ``predicate`` until it holds; fail past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def swap_then_refuse_under_load(
    url: str,
    image_ids: list[str],
    root: Path,
    built_versions,
    health,
    after_swap=lambda: None,
    timeout_s: float = 60.0,
) -> QueryLoad:
    """Four query threads (two text searches to one similar-image query, over ``image_ids``,
    which v1 and v2 both hold) while v2 is published and swapped in, then ``after_swap()``, then
    v3 -- a complete-looking version with a damaged file -- published and refused; 20 answers
    before, after the swap and after the refusal. The stopped load, for its failures, the
    versions it saw and its slowest answer; ``health()`` is the server's /health."""
    with QueryLoad(url, image_ids, (SIMILAR, SEARCH, SEARCH)) as hammer:
        wait_for(lambda: hammer.ok >= 20, timeout_s)
        publish(root, built_versions["v2"], "v2")
        wait_for(lambda: health()["serving"]["version"] == "v2", timeout_s)
        swapped_at = hammer.ok
        wait_for(lambda: hammer.ok >= swapped_at + 20, timeout_s)
        after_swap()
        publish_damaged_copy(root, "v2", "v3")
        wait_for(lambda: "v3" in health()["reload"]["refused"], timeout_s)
        refused_at = hammer.ok
        wait_for(lambda: hammer.ok >= refused_at + 20, timeout_s)
    return hammer


@pytest.fixture(scope="module")
def v2_root(tmp_path_factory, built_versions) -> Path:
    """A publish root serving v2 (all 8 photos), for one test module."""
    root = tmp_path_factory.mktemp("v2-root")
    publish(root, built_versions["v2"], "v2")
    return root


@pytest.fixture(scope="module")
def v2_client(v2_root: Path, serve_models: Path):
    """The app over ``v2_root`` with the suite's joint model, lifespan run (no polling)."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServeConfig

    config = ServeConfig(index=str(v2_root), models_dir=str(serve_models), poll_interval_s=0)
    with TestClient(create_app(config)) as test_client:
        yield test_client


@pytest.fixture()
def publish_root(tmp_path: Path, built_versions) -> Path:
    """A fresh publish root serving v1."""
    root = tmp_path / "published"
    publish(root, built_versions["v1"], "v1")
    return root


# The browser the page tests drive: Debian's chromium (`make browser`), through Playwright.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def wait_until(page, expression: str, arg=None, timeout_s: float = 30.0) -> None:
    """Poll ``expression`` (a JS expression, or a function of ``arg``) in ``page`` until truthy.

    Playwright's ``wait_for_function`` compiles its predicate with eval inside the page, which
    the search page's CSP forbids (no 'unsafe-eval', as it should be); ``page.evaluate`` goes
    through DevTools, outside the page's policy.
    """
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression, arg):
        assert time.monotonic() < deadline, f"timed out waiting for: {expression}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for one test module (skips when it is not installed)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing (make browser installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page_server(tmp_path_factory, built_versions, serve_models):
    """A search-page server for one browser test module: v2 published, the joint model loaded."""
    from serving.app import create_app
    from serving.config import ServeConfig
    from serving.server import BackgroundServer

    root = tmp_path_factory.mktemp("page-root")
    publish(root, built_versions["v2"], "v2")
    config = ServeConfig(index=str(root), models_dir=str(serve_models), poll_interval_s=0)
    with BackgroundServer(create_app(config)) as running:
        yield running
