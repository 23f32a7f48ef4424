"""Versions of a publish root and the nightly steps around the index job, on real index outputs."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from imgsearch import cli, nightly
from index.manifest import ManifestVerificationError
from index.publish import (
    list_versions,
    prune_versions,
    publish_version,
    read_pointer,
    rollback,
    write_pointer,
)
from pipelines import index_job


@pytest.fixture(scope="module")
def built_version(tmp_path_factory, coco_photos) -> Path:
    """One real (fake-encoder) index output over two photos, copied into each test's root."""
    corpus = tmp_path_factory.mktemp("corpus")
    for photo in coco_photos[:2]:
        shutil.copy(photo, corpus / photo.name)
    out = tmp_path_factory.mktemp("built") / "out"
    index_job.run(
        ["--corpus", str(corpus), "--out", str(out), "--encoder", "fake", "--weights", "none",
         "--image_size", "32", "--run_version", "built"]
    )  # fmt: skip
    return out


@pytest.fixture()
def root(tmp_path, built_version) -> Path:
    """A publish root holding complete versions 20260101..20260104, nothing published."""
    for version in ("20260101", "20260102", "20260103", "20260104"):
        shutil.copytree(built_version, tmp_path / "root" / "versions" / version)
    return tmp_path / "root"


def _partial(version: Path) -> None:
    """A version a job is still writing: some table files, no manifest yet."""
    (version / "table").mkdir(parents=True)
    (version / "table" / "embeddings-00000-of-00002.parquet").write_bytes(b"PAR1")


def _metrics(path: Path, r1: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    report = {"methods": {"dual": {"text_to_image": {"R@1": r1, "R@10": 0.9, "MRR": 0.5}}}}
    (path / "metrics.json").write_text(json.dumps(report))


def test_list_publish_rollback(root):
    _partial(root / "versions" / "20260105")
    assert [(v.version, v.complete) for v in list_versions(str(root))] == [
        ("20260101", True), ("20260102", True), ("20260103", True), ("20260104", True),
        ("20260105", False),
    ]  # fmt: skip
    publish_version(str(root), "20260102")
    pointer = publish_version(str(root), "20260103")
    assert (pointer.version, pointer.previous) == ("20260103", "20260102")
    # Publishing the version that already serves is a no-op (a nightly rerun).
    assert publish_version(str(root), "20260103") == read_pointer(str(root))
    with pytest.raises(FileNotFoundError):
        publish_version(str(root), "20260105")  # incomplete: never served
    assert rollback(str(root)).version == "20260102"
    assert rollback(str(root), to="20260104").version == "20260104"
    with pytest.raises(ValueError, match="already serves"):
        rollback(str(root), to="20260104")


def test_publish_refuses_a_damaged_version_and_leaves_the_pointer(root):
    publish_version(str(root), "20260101")
    table = next((root / "versions" / "20260102" / "table").glob("*.parquet"))
    table.write_bytes(table.read_bytes()[:-10])
    with pytest.raises(ManifestVerificationError, match="size mismatch"):
        publish_version(str(root), "20260102")
    assert read_pointer(str(root)).version == "20260101"


def test_retention_keeps_newest_and_the_rollback_pair(root):
    write_pointer(str(root), "20260101")
    write_pointer(str(root), "20260102")  # serves 02, previous 01
    _partial(root / "versions" / "20260100")  # incomplete: not ours to delete
    assert prune_versions(str(root), keep=1) == ["20260103"]
    left = [v.version for v in list_versions(str(root))]
    assert left == ["20260100", "20260101", "20260102", "20260104"]
    assert prune_versions(str(root), keep=1) == []  # idempotent
    with pytest.raises(ValueError):
        prune_versions(str(root), keep=0)


def test_plan_run_builds_on_the_published_version(root):
    plan = nightly.plan_run(str(root / "empty"), "20260110")
    assert plan["previous"] == "" and not plan["complete"]
    write_pointer(str(root), "20260102")
    plan = nightly.plan_run(str(root), "20260110")
    assert plan["previous"].endswith("versions/20260102") and not plan["complete"]
    write_pointer(str(root), "20260103")
    # Rerunning the published version: it is complete, and builds on the one before it.
    plan = nightly.plan_run(str(root), "20260103")
    assert plan["complete"] and plan["previous"].endswith("versions/20260102")


def test_failing_gate_leaves_the_pointer_untouched(root):
    _metrics(root / "versions" / "20260101" / "eval", r1=0.40)
    write_pointer(str(root), "20260101")
    _metrics(root / "versions" / "20260102" / "eval", r1=0.30)
    with pytest.raises(nightly.GateFailed, match=r"R@1: 0\.3000 < published 0\.4000"):
        nightly.run_gate(str(root), "20260102", evaluated=True, tolerance=0.05)
    assert read_pointer(str(root)).version == "20260101"
    gate = json.loads((root / "versions" / "20260102" / "eval" / "gate.json").read_text())
    assert gate["passed"] is False and gate["reasons"]
    # Within tolerance it passes, and only then does the DAG publish.
    _metrics(root / "versions" / "20260103" / "eval", r1=0.39)
    assert nightly.run_gate(str(root), "20260103", evaluated=True, tolerance=0.05).passed
    assert nightly.publish(str(root), "20260103")["version"] == "20260103"


def test_gate_without_eval_set_passes_and_ignores_stale_metrics(root):
    _metrics(root / "versions" / "20260101" / "eval", r1=0.40)
    write_pointer(str(root), "20260101")
    _metrics(root / "versions" / "20260102" / "eval", r1=0.0)  # left from an older attempt
    result = nightly.run_gate(str(root), "20260102", evaluated=False)
    assert result.passed and "no eval set configured" in result.reasons[0]
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        nightly.run_gate(str(root), "20260103", evaluated=True)


def test_evaluate_is_skipped_without_dataset_and_builds_the_eval_command(root):
    assert nightly.evaluate(str(root / "versions" / "20260101"), "") is None
    argv = nightly.eval_argv(
        "/data/coco",
        "/r/versions/v",
        "/models",
        ["--split", "val"],
        python="py",
        encoder_spec={"name": "mobilenet_v2", "weights": "/w.h5", "image_size": 224},
    )
    assert argv == [
        "py", "-m", "evaluation.eval_job", "--dataset", "/data/coco", "--out", "/r/versions/v/eval",
        "--models", "/models", "--encoder", "mobilenet_v2", "--weights", "/w.h5", "--split", "val",
    ]  # fmt: skip


def test_notify_posts_to_the_reload_url(root):
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/reload"
        assert nightly.notify(str(root), "20260101", url) == "http 204"
    finally:
        server.shutdown()
    assert received == [{"root": str(root), "version": "20260101"}]
    assert nightly.notify(str(root), "20260101") == "pointer"


def test_cli_publish_rollback_and_versions(root, capsys):
    assert cli.main(["publish", "--root", str(root), "--version", "20260101"]) == 0
    assert cli.main(["publish", "--root", str(root), "--version", "20260102"]) == 0
    assert cli.main(["rollback", "--root", str(root)]) == 0
    assert "serves 20260101 again" in capsys.readouterr().out
    assert read_pointer(str(root)).version == "20260101"
    assert cli.main(["versions", "--root", str(root), "--prune", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert "deleted 20260103" in out and "* 20260101" in out
    assert cli.main(["rollback", "--root", str(root), "--to", "nope"]) == 2
    assert "error" in capsys.readouterr().err
