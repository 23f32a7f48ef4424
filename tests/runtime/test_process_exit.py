"""``runtime.process_exit``: real child processes, ended the way the entry points end them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_child(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = textwrap.dedent(
        f"""
        import atexit, sys, tempfile
        from runtime.process_exit import run_as_process
        marker = {str(tmp_path / "atexit-ran")!r}
        atexit.register(lambda: open(marker, "w").write("yes"))
        scratch = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})  # cleaned by its finalizer
        open(marker + ".scratch", "w").write(scratch.name)
        sys.stdout.write("buffered, no newline")
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("run_as_process(lambda: 3)", 3),
        ("run_as_process(lambda: None)", 0),
        ("def main():\n    raise SystemExit(2)\nrun_as_process(main)", 2),
        ("run_as_process(lambda: 'bad flag')", 1),
    ],
)
def test_exit_code_output_and_python_clean_up_survive(body, code, tmp_path):
    done = _run_child(body, tmp_path)
    assert done.returncode == code, done.stderr
    assert done.stdout == "buffered, no newline"  # flushed although os._exit skips teardown
    assert (tmp_path / "atexit-ran").read_text() == "yes"
    scratch = Path((tmp_path / "atexit-ran.scratch").read_text())
    assert not scratch.exists()  # weakref finalizers ran: temporary folders are removed


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(tmp_path):
    done = _run_child("def main():\n    raise RuntimeError('boom')\nrun_as_process(main)", tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: boom" in done.stderr
    assert (tmp_path / "atexit-ran").read_text() == "yes"


def test_a_reader_that_goes_away_is_not_an_error(tmp_path):
    script = (
        "from runtime.process_exit import run_as_process\n"
        "def main():\n"
        "    for n in range(100000):\n"
        "        print('line', n)\n"
        "run_as_process(main)\n"
    )
    done = subprocess.run(
        f"{sys.executable} -c \"$SCRIPT\" | head -1", shell=True, capture_output=True,
        text=True, cwd=REPO, timeout=60, env={"SCRIPT": script, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.stdout == "line 0\n"
    assert done.stderr == ""  # no BrokenPipeError traceback
