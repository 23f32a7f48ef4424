"""Issue 24's reload failures, reproduced on a real publish root: a refused version that is
repaired under the same name is served; /ready says when the published version is not the one
served; a server starting on a bad or unreadable pointer serves the newest version servers have
served; plain rollback skips a version every server refused; a corrupt latest.json blocks
neither publish nor rollback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imgsearch import cli
from index.publish import (
    mark_served,
    publish_version,
    read_pointer,
    rollback,
    served_versions,
    write_pointer,
)
from serving.app import create_app
from serving.config import ServeConfig
from serving.state import QueryModels
from tests.serving.conftest import corrupt_a_table_file, publish


def _app(root: Path, **config):
    return create_app(ServeConfig(index=str(root), poll_interval_s=0, **config), QueryModels())


def _gauge(metrics: str, name: str) -> float:
    return float(
        next(line for line in metrics.splitlines() if line.startswith(name + " ")).split()[1]
    )


def _verifies_but_cannot_load(root: Path, source: Path, version: str) -> None:
    """A version whose checksums pass (publish accepts it) but that no server can load: its
    manifest claims another vector dimension."""
    target = root / "versions" / version
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["dim"] += 1
    (target / "manifest.json").write_text(json.dumps(manifest))


def test_a_refused_version_is_served_once_repaired_under_the_same_name(
    publish_root: Path, built_versions
) -> None:
    app = _app(publish_root, ready_grace_s=0)
    reloader = app.state.reloader
    broken = publish(publish_root, built_versions["v2"], "v2")
    damaged, good = corrupt_a_table_file(broken)
    assert reloader.check_once() == "refused"
    assert reloader.check_once() == "unchanged"  # same files: not loaded again at every poll
    with TestClient(app) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["version"] == "v1" and body["published"] == "v2" and not body["ready"]
        assert "ManifestVerificationError" in body["reason"]
        metrics = client.get("/metrics").text
        assert _gauge(metrics, "imgsearch_index_refused_versions") == 1
        assert _gauge(metrics, "imgsearch_index_behind_seconds") > 0

        damaged.write_bytes(good)  # the repair, published again under the same name
        assert reloader.check_once() == "swapped"
        assert app.state.holder.current.version == "v2"
        ready = client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "version": "v2", "published": "v2"}
        assert client.get("/health").json()["reload"]["refused"] == {}
        assert _gauge(client.get("/metrics").text, "imgsearch_index_behind_seconds") == 0


def test_ready_stays_green_within_the_grace_period(publish_root: Path, built_versions) -> None:
    app = _app(publish_root)  # the default grace: ten minutes
    corrupt_a_table_file(publish(publish_root, built_versions["v2"], "v2"))
    assert app.state.reloader.check_once() == "refused"
    with TestClient(app) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "version": "v1", "published": "v2"}
        health = client.get("/health").json()["reload"]
        assert health["published"] == "v2" and health["behind_since"] is not None


def test_pointer_errors_show_in_health_and_metrics(publish_root: Path) -> None:
    app = _app(publish_root, ready_grace_s=0)
    (publish_root / "latest.json").write_text("{not json")
    assert app.state.reloader.check_once() == "pointer-error"
    with TestClient(app) as client:
        health = client.get("/health").json()["reload"]
        assert "is not a valid publish pointer" in health["pointer_error"]
        assert str(publish_root) not in health["pointer_error"]  # a file name, not the path
        metrics = client.get("/metrics").text
        assert _gauge(metrics, "imgsearch_index_pointer_ok") == 0
        assert 'imgsearch_index_reloads_total{result="pointer-error"} 1.0' in metrics
        assert client.get("/ready").status_code == 503
    write_pointer(str(publish_root), "v1")
    assert app.state.reloader.check_once() == "unchanged"
    assert app.state.reloader.status().pointer_error is None


def test_servers_record_what_they_served(publish_root: Path, built_versions) -> None:
    app = _app(publish_root)
    assert served_versions(str(publish_root)) == ["v1"]
    publish(publish_root, built_versions["v2"], "v2")
    assert app.state.reloader.check_once() == "swapped"
    assert served_versions(str(publish_root)) == ["v1", "v2"]
    marker = json.loads((publish_root / "served" / "v2.json").read_text())
    assert marker["version"] == "v2" and marker["verified"] is True


def test_a_read_only_root_is_reported_not_fatal(publish_root: Path, monkeypatch) -> None:
    def refuse(*_args, **_kwargs):
        raise PermissionError("403 Forbidden: the serving account cannot write to the bucket")

    monkeypatch.setattr("serving.reloader.mark_served", refuse)
    app = _app(publish_root)
    with TestClient(app) as client:
        assert "403 Forbidden" in client.get("/health").json()["reload"]["marker_error"]
        assert client.get("/ready").status_code == 200


def test_a_fresh_server_on_a_bad_pointer_serves_the_version_before(
    publish_root: Path, built_versions, caplog
) -> None:
    """The probe: latest.json names a damaged version; a restarted pod used to exit 2."""
    corrupt_a_table_file(publish(publish_root, built_versions["v2"], "v2"))
    with caplog.at_level("ERROR"):
        app = _app(publish_root, ready_grace_s=0)
    assert app.state.holder.current.version == "v1"  # the pointer's previous, and served
    assert "serving v1 instead" in caplog.text
    with TestClient(app) as client:
        health = client.get("/health").json()
        assert health["serving"]["version"] == "v1"
        assert "ManifestVerificationError" in health["reload"]["refused"]["v2"]
        assert client.get("/ready").json()["published"] == "v2"
    assert app.state.reloader.check_once() == "unchanged"  # not reloaded until it changes


def test_a_fresh_server_on_an_unreadable_pointer_serves_the_newest_served(
    publish_root: Path, built_versions
) -> None:
    publish(publish_root, built_versions["v2"], "v2")
    mark_served(str(publish_root), "v1", True)
    mark_served(str(publish_root), "v2", True)
    (publish_root / "latest.json").write_text("")
    app = _app(publish_root)
    assert app.state.holder.current.version == "v2"
    assert "is not a valid publish pointer" in app.state.reloader.status().pointer_error


def test_with_nothing_to_fall_back_to_the_server_does_not_start(publish_root: Path) -> None:
    from index.manifest import ManifestVerificationError

    corrupt_a_table_file(publish_root / "versions" / "v1")
    with pytest.raises(ManifestVerificationError):
        _app(publish_root)


def test_rollback_skips_a_version_every_server_refused(publish_root: Path, built_versions) -> None:
    """v1 and v2 served, v3 published and refused, then v4 published and refused too: plain
    rollback goes to v2, the newest version a server served (``previous`` would be v3)."""
    root = str(publish_root)
    app = _app(publish_root)
    publish(publish_root, built_versions["v2"], "v2")
    assert app.state.reloader.check_once() == "swapped"
    for version in ("v3", "v4"):
        _verifies_but_cannot_load(publish_root, built_versions["v2"], version)
        publish_version(root, version)  # its checksums pass
        assert app.state.reloader.check_once() == "refused"
    assert read_pointer(root).previous == "v3"
    assert rollback(root).version == "v2"
    assert app.state.reloader.check_once() == "unchanged"  # already serving v2
    assert app.state.reloader.status().behind_since is None


def test_rollback_without_served_records_uses_previous(publish_root: Path, built_versions) -> None:
    root = str(publish_root)
    publish(publish_root, built_versions["v2"], "v2")
    assert served_versions(root) == []
    assert rollback(root).version == "v1"


def test_a_corrupt_pointer_blocks_neither_publish_nor_rollback(
    publish_root: Path, built_versions, capsys
) -> None:
    root = str(publish_root)
    publish(publish_root, built_versions["v2"], "v2")
    mark_served(root, "v1", True)
    (publish_root / "latest.json").write_text('{"version": ')
    assert cli.main(["versions", "--root", root]) == 0
    assert "latest.json cannot be read" in capsys.readouterr().out
    assert cli.main(["rollback", "--root", root]) == 0  # the newest served: v1
    assert read_pointer(root).version == "v1"
    (publish_root / "latest.json").write_text("[]")
    assert cli.main(["publish", "--root", root, "--version", "v2"]) == 0
    pointer = read_pointer(root)
    assert (pointer.version, pointer.previous) == ("v2", None)
