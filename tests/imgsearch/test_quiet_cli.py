"""What a user sees: ``imgsearch index`` on a few real photos says what it did in a few lines.

A real run (MobileNetV2 from the assets, DirectRunner, ScaNN) in a fresh process, with no
``TF_CPP_MIN_LOG_LEVEL`` inherited, so the CLI's own defaults are what is measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_STDERR_LINES = 20


def _index(tmp_path: Path, photos: list[Path], *flags: str) -> subprocess.CompletedProcess:
    corpus = tmp_path / "photos"
    corpus.mkdir(exist_ok=True)
    for photo in photos:
        shutil.copy(photo, corpus / photo.name)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = tmp_path / f"out{len(flags)}"
    return subprocess.run(
        [sys.executable, "-m", "imgsearch.cli", "index", "--corpus", str(corpus), "--out",
         str(out), *flags],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip


def test_index_is_quiet_by_default_and_json_on_request(tmp_path, coco_photos):
    done = _index(tmp_path, coco_photos[:4])
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) <= MAX_STDERR_LINES, done.stderr
    assert "Traceback" not in done.stderr
    # None of the third-party noise it used to print (Beam's typehints, TensorFlow's banners).
    for noise in ("Converting string literal", "cuInit", "oneDNN", "Resource module"):
        assert noise not in done.stderr
    assert any("pipelines.index_job" in line for line in lines)  # our own steps are there
    assert "indexed 4 images" in done.stdout

    quiet = _index(tmp_path, coco_photos[:4], "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr

    machine = _index(tmp_path, coco_photos[:4], "--log-format", "json", "--run_version", "j1")
    assert machine.returncode == 0, machine.stderr
    records = [json.loads(line) for line in machine.stderr.splitlines()]
    assert records and all(r["severity"] in ("INFO", "WARNING") for r in records)
