"""Incremental reindexing cost: a full run, then a run after adding 1% new images.

Run: ``.venv/bin/python benchmarks/bench_incremental.py [--sizes 2000 7000] [--new-fraction 0.01]``

Real ``imgsearch index`` runs (DirectRunner, real MobileNetV2 from the assets folder, each in
its own process, as the nightly DAG launches them) over the first N Flickr8k photos, linked
(not copied) into a temp folder:

1. full:         every image decoded and encoded;
2. incremental:  N/100 new photos added, ``--previous`` = run 1 (only the new ones encoded);
3. no change:    ``--previous`` = run 2 over the same corpus (nothing encoded): the floor of
                 an incremental run at this corpus size (listing, hashing every file, the
                 join, the table write, the ScaNN build);
4. start-up:     a process that only imports what the job imports (Python, TensorFlow, Beam,
                 ScaNN) and builds the encoder: the fixed cost every run pays.

It prints wall seconds of each and the ratio incremental/full, both whole-wall and with the
fixed start-up cost subtracted from both, and writes ``benchmarks/results/incremental.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imgsearch import settings  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "incremental.md"
STARTUP = (
    "import time; t = time.perf_counter(); "
    "import apache_beam, scann, pipelines.index_job; b = time.perf_counter(); "
    "from encoders.base import EncoderSpec; from encoders.registry import create_image_encoder; "
    "create_image_encoder(EncoderSpec(name='mobilenet_v2', weights='auto')); "
    "print(b - t, time.perf_counter() - b)"
)


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


def run_index(corpus: Path, out: Path, version: str, previous: Path | None) -> tuple[float, str]:
    """Wall seconds of one ``imgsearch index`` process, and its summary."""
    cmd = [sys.executable, "-m", "imgsearch.cli", "index", "--corpus", str(corpus),
           "--out", str(out), "--weights", "auto", "--run_version", version]  # fmt: skip
    if previous is not None:
        cmd += ["--previous", str(previous)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"index failed:\n{done.stderr[-4000:]}")
    return wall, done.stdout


def startup_seconds() -> tuple[float, float, float]:
    """A process that does no work: (its wall, Beam + ScaNN + job imports, TF + model build)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", STARTUP], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"start-up probe failed:\n{done.stderr[-3000:]}")
    imports, model = done.stdout.strip().splitlines()[-1].split()
    return wall, float(imports), float(model)


def _counts(summary: str) -> str:
    found = re.search(r"incremental over \S+: (.*)", summary)
    return found.group(1) if found else "full run"


def bench_size(photos: list[Path], n: int, added: int, tmp: Path) -> dict:
    """Full, +added, and no-change runs over the first ``n`` photos; wall seconds and counts."""
    corpus, root = tmp / f"corpus-{n}", tmp / f"versions-{n}"
    corpus.mkdir()
    for photo in photos[:n]:
        (corpus / photo.name).symlink_to(photo)
    full, summary = run_index(corpus, root / "v1", "v1", None)
    print(f"full run, {n} images: {full:.1f}s\n{summary}")
    for photo in photos[n : n + added]:
        (corpus / photo.name).symlink_to(photo)
    incremental, summary = run_index(corpus, root / "v2", "v2", root / "v1")
    print(f"incremental run, +{added} images: {incremental:.1f}s\n{summary}")
    counts = _counts(summary)
    unchanged, summary = run_index(corpus, root / "v3", "v3", root / "v2")
    print(f"no-change run: {unchanged:.1f}s ({_counts(summary)})")
    rows = json.loads((root / "v2" / "manifest.json").read_text())["counts"]["indexed"]
    return {"n": n, "added": added, "rows": rows, "full": full, "incremental": incremental,
            "unchanged": unchanged, "counts": counts}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000], help="first-run sizes")
    parser.add_argument("--new-fraction", type=float, default=0.01)
    args = parser.parse_args()
    assets = settings.assets_dir()
    photos = sorted((assets / "datasets" / "flickr8k" / "images").glob("*.jpg")) if assets else []
    plans = [(n, max(1, round(n * args.new_fraction))) for n in args.sizes]
    if any(len(photos) < n + added for n, added in plans):
        raise SystemExit(f"need {max(n + a for n, a in plans)} Flickr8k photos in the assets")

    startup_wall, startup_imports, startup_model = startup_seconds()
    print(f"start-up (imports + model build, no work): {startup_wall:.1f}s")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-incremental-") as tmp:
        for n, added in plans:
            r = bench_size(photos, n, added, Path(tmp))
            r["ratio"] = r["incremental"] / r["full"]
            r["ratio_net"] = (r["incremental"] - startup_wall) / (r["full"] - startup_wall)
            print(f"N={n}: ratio incremental/full {r['ratio']:.3f} whole wall, "
                  f"{r['ratio_net']:.3f} without start-up")  # fmt: skip
            results.append(r)

    cpu = platform.processor() or platform.machine()
    table = "\n".join(
        f"| {r['n']} | +{r['added']} | {r['full']:.1f} | {r['incremental']:.1f} | "
        f"{r['unchanged']:.1f} | **{r['ratio']:.3f}** | **{r['ratio_net']:.3f}** |"
        for r in results
    )
    counts = "\n".join(f"- N={r['n']}: {r['counts']}." for r in results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        f"""# Incremental reindexing (generated by `benchmarks/bench_incremental.py`)

{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPU cores ({cpu}), shared with
other jobs (load average {os.getloadavg()[0]:.1f} at the end). Real MobileNetV2 (assets weights),
DirectRunner, each run a fresh `imgsearch index` process. Flickr8k photos, 224x224 JPEGs.
Command: `python benchmarks/bench_incremental.py --sizes {" ".join(map(str, args.sizes))}`.

| N (full run) | new | full s | incremental s | no change s | ratio wall | ratio net |
|---:|---:|---:|---:|---:|---:|---:|
{table}

Start-up of a process that does no work: {startup_wall:.1f} s ({startup_imports:.1f} s
importing Beam, ScaNN (and with it TensorFlow) and the job, {startup_model:.1f} s building
MobileNetV2, the rest process start). "Net of start-up" subtracts it from both runs.

{counts}

Every run pays the fixed costs, however little changed: process start, imports, TensorFlow
and the model (RunInference builds it when the worker starts, even with nothing to encode),
DirectRunner start (not in the start-up figure, so it stays on both sides of the net ratio).
The no-change run is the floor of an incremental run at each size: it still lists and hashes
every file (the content hash is the key, so every byte is read once), joins with the previous
table, rewrites the table and rebuilds the ScaNN index. Encoding grows linearly with N in a
full run while the fixed part does not, so the ratio falls as the corpus grows; on this
2-core machine the issue's 5% needs a corpus whose full run is far longer than the fixed
~10-15 s, i.e. well beyond Flickr8k's 7,091 photos.
"""
    )
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
