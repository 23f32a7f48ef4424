"""``imgsearch doctor``: the judges on made-up observations, the checks on this machine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imgsearch import doctor
from imgsearch.doctor import MISSING, OK, WARN


def test_python_judge_pins_3_11() -> None:
    assert doctor.judge_python((3, 11, 7)).status == OK
    wrong = doctor.judge_python((3, 12, 1))
    assert wrong.status == MISSING and "3.12.1" in wrong.detail and "3.11" in wrong.fix


def test_java_and_chromium_are_optional() -> None:
    assert doctor.judge_java(None, None).status == WARN
    assert doctor.judge_java("/usr/bin/java", None).status == WARN
    found = doctor.judge_java("/usr/bin/java", 'openjdk version "17.0.15"\nOpenJDK Runtime\n')
    assert found.status == OK and found.detail.startswith('openjdk version "17.0.15"')
    absent = doctor.judge_chromium("/usr/bin/chromium", False, True)
    assert absent.status == WARN and "make browser" in absent.fix
    elsewhere = doctor.judge_chromium("/opt/chromium", True, True)
    assert elsewhere.status == OK and "/usr/bin/chromium" in elsewhere.detail


def test_cpu_only_tensorflow_is_fine_and_a_missing_one_is_not() -> None:
    cpu = doctor.judge_tensorflow("2.20.0", ["CPU:0"])
    assert cpu.status == OK and "CPU only is fine" in cpu.detail
    assert doctor.judge_tensorflow(None, [], "No module named 'tensorflow'").status == MISSING
    assert doctor.judge_scann("1.4.2", False, "wrong rows").status == MISSING


def test_low_disk_space_warns() -> None:
    assert doctor.judge_free_space(Path("/x"), 10 * 2**30).status == OK
    assert doctor.judge_free_space(Path("/x"), 2**20).status == WARN


def test_java_check_runs_java_version_through_the_given_runner() -> None:
    def fake_run(command, **kwargs):
        assert command == ["/opt/jdk/bin/java", "-version"]
        return subprocess.CompletedProcess(command, 0, "", 'openjdk version "21"\n')

    check = doctor.check_java(run=fake_run, which=lambda name: "/opt/jdk/bin/java")
    assert check.status == OK and 'openjdk version "21"' in check.detail


def test_real_assets_are_ok(assets_dir: Path) -> None:
    checks = [doctor.check_assets_folder(assets_dir, True), *doctor.check_weights(assets_dir)]
    checks += [doctor.check_coco_mini(assets_dir), doctor.check_flickr8k(assets_dir)]
    assert [c.status for c in checks] == [OK] * 5, doctor.format_checks(checks)


def test_empty_assets_folder_is_missing_with_a_fix(tmp_path: Path) -> None:
    weights = doctor.check_weights(tmp_path)
    coco, flickr = doctor.check_coco_mini(tmp_path), doctor.check_flickr8k(tmp_path)
    assert [c.status for c in weights] == [MISSING, MISSING] and coco.status == MISSING
    assert flickr.status == WARN  # optional: the demo then answers no text queries
    assert "mobilenet_v2_1.0_224_no_top.weights.h5 is missing" in weights[0].detail
    assert "--weights imagenet" in weights[0].fix and "val2017" in coco.fix
    text = doctor.format_checks([*weights, coco, flickr])
    assert "fix: put mobilenet_v2_1.0_224_no_top.weights.h5" in text
    assert "MISSING: not ready" in text


def test_a_git_lfs_pointer_is_not_weights(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / doctor.MOBILENET_WEIGHTS).write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0\n"
    )
    check = doctor.check_weights(tmp_path)[0]
    assert check.status == MISSING and "not a valid file" in check.detail


def test_no_assets_folder_says_what_to_provide() -> None:
    check = doctor.check_assets_folder(None, False)
    assert check.status == MISSING and "IMGSEARCH_ASSETS" in check.fix


def test_models_dirs(tmp_path: Path) -> None:
    bogus = doctor.check_models(tmp_path / "no-such-models")
    assert bogus.status == MISSING and "is not a folder" in bogus.detail
    assert "imgsearch train joint" in bogus.fix
    empty = doctor.check_models(tmp_path)
    assert empty.status == WARN and "holds no published model" in empty.detail
    broken = tmp_path / "dual-tfidf" / "20250101T000000Z-0123abcd"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    flagged = doctor.check_models(tmp_path)
    assert flagged.status == WARN
    assert "unreadable config.json in dual-tfidf" in flagged.detail
    assert "no LATEST in dual-tfidf" in flagged.detail


@pytest.mark.slow
def test_main_on_this_machine_json(assets_dir: Path, tmp_path: Path, capsys) -> None:
    """Every real check once (TensorFlow and ScaNN included), as JSON."""
    code = doctor.main(["--assets", str(assets_dir), "--models", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    by_name = {c["name"]: c for c in report["checks"]}
    assert code == 0 and report["ok"] is True
    for name in ("python", "assets", "mobilenet weights", "tensorflow", "scann"):
        assert by_name[name]["status"] == OK, by_name[name]
    assert by_name["models"]["status"] == WARN
    assert set(by_name["java"]) == {"name", "status", "detail", "fix"}


def test_main_fails_on_an_empty_assets_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    # The slow checks are covered above; here only the exit status and the printed lines.
    monkeypatch.setattr(doctor, "check_tensorflow", lambda: doctor.Check("tensorflow", OK, "x"))
    monkeypatch.setattr(doctor, "check_scann", lambda: doctor.Check("scann", OK, "x"))
    code = doctor.main(["--assets", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert any(
        line.startswith("MISSING") and "mobilenet weights" in line for line in out.splitlines()
    )
