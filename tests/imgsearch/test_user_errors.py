"""Every user error ends in one line on stderr saying what is wrong, exit status 2, no traceback.

Table-driven, through ``imgsearch.cli.main`` in this process (real jobs, real files, the
served-index fixtures of tests/conftest.py). ``gs://`` without credentials is left out: Beam's
GCS client retries for two minutes before it gives up (the message it ends in is checked by
``tests/pipelines/test_corpus.py``).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from imgsearch import cli
from tests.index_args import FAKE_ENCODER
from tests.serving.conftest import JOINT_MODEL


def _cases(tmp: Path, built: dict[str, Path], models: Path, photos: Path, port: int):
    """(name, argv, env, words the one line must hold)."""
    no_uri = tmp / "no-uri.csv"
    no_uri.write_text("url,title\nphoto.jpg,a photo\n")
    tsv = tmp / "photos.tsv"
    tsv.write_text("uri\tid\n")
    empty_assets = tmp / "empty-assets"
    empty_assets.mkdir()
    out = str(tmp / "out")
    index = ["index", "--corpus", str(photos), "--out", out]
    return [
        ("missing corpus", ["index", "--corpus", str(tmp / "nothing"), "--out", out], {},
         ["matched no files"]),
        ("manifest without uri", ["index", "--corpus", str(no_uri), "--out", out, *FAKE_ENCODER],
         {}, ["no 'uri' column", "url"]),
        ("unknown manifest type", ["index", "--corpus", str(tsv), "--corpus_format", "manifest",
                                   "--out", out], {}, ["unknown manifest type", ".csv"]),
        ("missing assets", index, {"IMGSEARCH_ASSETS": str(empty_assets)},
         ["mobilenet_v2", "--weights imagenet"]),
        ("missing models dir", [*index, *FAKE_ENCODER, "--models", str(tmp / "no-models"),
                                "--joint_model", "dual-x"], {}, ["no model 'dual-x'"]),
        ("encoder/model mismatch", [*index, "--encoder", "mobilenet_v2", "--models", str(models),
                                    "--joint_model", JOINT_MODEL], {},
         ["trained on fake/v1", "mobilenet_v2"]),
        ("unknown image id", ["search", "--index", str(built["v1"]), "--image-id", "nope"], {},
         ["'nope'", "not in index version v1"]),
        ("missing query image", ["search", "--index", str(built["v1"]), "--image",
                                 str(tmp / "none.jpg")], {}, ["none.jpg"]),
        ("text without a joint model", ["search", "--index", str(built["v1"]), "--text", "dog",
                                        "--models", str(tmp / "empty-assets")], {},
         ["no joint model", "imgsearch train joint"]),
        ("index that is not one", ["serve", "--index", str(tmp / "nowhere")], {},
         ["neither a publish root"]),
        ("port in use", ["serve", "--index", str(built["v1"]), "--port", str(port)], {},
         [f"127.0.0.1:{port}", "--port"]),
        ("bad log format", ["--log-format", "xml", "index"], {}, ["--log-format", "json"]),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def busy_port():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield listener.getsockname()[1]
    listener.close()


def test_each_user_error_is_one_clear_line(
    tmp_path, monkeypatch, capsys, built_versions, serve_models, serve_photos, busy_port
):
    photos = serve_photos[0].parent
    failures = []
    for name, argv, env, words in _cases(tmp_path, built_versions, serve_models, photos,
                                         busy_port):  # fmt: skip
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            code = cli.main(argv)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if ": error: " in line]
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if "Traceback" in err:
            problems.append("a traceback")
        if len(errors) != 1:
            problems.append(f"{len(errors)} error lines")
        problems += [f"no {word!r}" for word in words if word not in err]
        if problems:
            failures.append(f"{name}: {', '.join(problems)}\n{err[-1500:]}")
    assert not failures, "\n\n".join(failures)


def test_verbose_adds_the_traceback(tmp_path, capsys):
    assert cli.main(["index", "-v", "--corpus", str(tmp_path / "nothing"), "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "matched no files" in err
