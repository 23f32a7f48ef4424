"""Search-server latency and throughput on a 1M-image index, steady and during a hot reload.

Run: ``.venv/bin/python benchmarks/bench_serving.py [--n 1000000] [--work DIR] [--duration 20]
[--models MODELS_DIR --real-index INDEX_DIR] [--json PATH]``

1. Builds (once; reused from ``--work``) a publish root with one index version of ``--n``
   images, written as a real Parquet embedding table and indexed by the project's
   ``index.build`` (ScaNN tree + AH). With ``--models`` (a trained models directory, e.g. the
   default recipe's) and ``--real-index`` (an index of real photos under that models' image
   encoder, e.g. ``imgsearch eval``'s ``OUT/index``), the dimensions and the text model are
   real: the real image embeddings grown to ``--n`` as ``bench_ann.py`` grows them, their
   joint embeddings computed by the models' default joint model, and that model (its text
   encoder and tower) answers the queries. Without them: synthetic clustered 64-d image and
   256-d joint vectors, and a bag-of-words text encoder fitted on Flickr8k's captions feeding a
   dual model with random weights.
2. Starts ``imgsearch serve`` on loopback: by default a supervisor and one worker process that
   serves (``--reload-in process``: a reload loads in a second worker, which takes over once
   it listens), or one process that reloads in a thread (``--reload-in thread``).
3. Drives ``GET /api/search?q=...&k=10`` with ``wrk`` (Debian package; one thread, keep-alive
   connections, captions drawn at random from Flickr8k dev) at low concurrency for latency and
   at higher concurrency for throughput, then again while a second version is published
   (``write_pointer``) so the server loads 1M vectors in the background and swaps. Memory is
   the whole process tree's (supervisor, workers, their decode processes), sampled through
   the reload for its peak.
4. Stops the server and times the same queries in-process (no HTTP) to show where the time
   goes: text encoder + tower, ScaNN, the whole answer.
5. Prints the figures and writes ``benchmarks/results/serving.md``, and the same figures as
   JSON (``--json``, default ``benchmarks/results/serving.json``).

The second version shares the first one's files through hard links (versions are immutable),
so publishing it is instant and the reload does the full work: verify checksums, read the
table, load both ScaNN shards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imgsearch import settings

IMAGE_DIM = 64
JOINT_DIM = 256
MODEL = "dual-bench"
CLUSTERS = 2000
# wrk's default is 2 s; loading a 1M-vector ScaNN shard holds the GIL for a few seconds (see
# the report), during which requests wait but do not fail.
CLIENT_TIMEOUT_S = 10


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _captions(assets: Path, split: str) -> list[str]:
    names = set((assets / "datasets/flickr8k/splits" / f"{split}.txt").read_text().split())
    captions = []
    with (assets / "datasets/flickr8k/captions.tsv").open(encoding="utf-8") as lines:
        next(lines)
        for line in lines:
            image, caption = line.rstrip("\n").split("\t", 1)
            if image in names:
                captions.append(caption)
    return captions


def query_captions(assets: Path) -> list[str]:
    """Flickr8k dev captions as queries, but those with a double quote: the query syntax
    reads one as the start of a quoted term (``serving.mixed_search``), and an unmatched one
    is answered 400, which would count as a failure here."""
    return [caption for caption in _captions(assets, "dev") if '"' not in caption]


def build_models(models: Path, assets: Path, image_encoder_id: str) -> tuple[str, str]:
    """A dual joint model (bag-of-words text side, fitted on Flickr8k train captions)."""
    from encoders.joint import KIND_DUAL, DenseLayer, JointModel
    from encoders.text_registry import create_text_encoder, fit_text_encoder
    from models.artifacts import save_joint_model

    spec = fit_text_encoder("bow", _captions(assets, "train"), models / "bow-text")
    text = create_text_encoder(spec)
    rng = np.random.default_rng(0)

    def layer(inputs: int) -> DenseLayer:
        kernel = rng.standard_normal((inputs, JOINT_DIM)).astype(np.float32) / np.sqrt(inputs)
        return DenseLayer(kernel, np.zeros(JOINT_DIM, np.float32), "linear")

    model = JointModel(
        KIND_DUAL,
        text.encoder_id,
        image_encoder_id,
        text.dim,
        IMAGE_DIM,
        text_layers=(layer(text.dim),),
        image_layers=(layer(IMAGE_DIM),),
    )
    metadata = {
        "text_encoder": {**spec.to_json(), "encoder_id": text.encoder_id},
        "image_encoder": {"name": "fake", "image_size": 64, "encoder_id": image_encoder_id},
        "note": "benchmark model: random weights",
    }
    folder = save_joint_model(models, MODEL, model, metadata)
    return MODEL, folder.name


def _clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.standard_normal((CLUSTERS, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, CLUSTERS, n)]
    vectors += 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def write_table(
    out: Path,
    n: int,
    encoder_id: str,
    joint_model: str | None,
    files: int = 8,
    image: np.ndarray | None = None,
    storage: str = "float32",
    joint: np.ndarray | None = None,
) -> None:
    """An ``n``-row embedding table as the index job writes it: ``image`` rows (default:
    synthetic clustered ``IMAGE_DIM``-d ones) stored as ``storage``, and ``joint`` rows (default
    synthetic ``JOINT_DIM``-d ones) unless ``joint_model`` is None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from index.schema import EMBEDDING_SCALE, embedding_table_schema, quantize_int8

    dim = IMAGE_DIM if image is None else image.shape[1]
    joint_dim = (JOINT_DIM if joint is None else joint.shape[1]) if joint_model else None
    schema = embedding_table_schema(dim, joint_dim, storage=storage)
    rng = np.random.default_rng(1)
    (out / "table").mkdir(parents=True)
    bounds = np.linspace(0, n, files + 1, dtype=np.int64)
    for f, (start, stop) in enumerate(itertools.pairwise(bounds)):
        count = int(stop - start)
        ids = [f"img{i:08d}" for i in range(start, stop)]
        embedding = _clustered(count, IMAGE_DIM, rng) if image is None else image[start:stop]
        extra = {}
        if storage == "int8":
            embedding, scales = quantize_int8(embedding)
            extra[EMBEDDING_SCALE] = pa.array(scales)
        elif storage == "float16":
            embedding = embedding.astype(np.float16)
        if joint_model:
            rows = _clustered(count, JOINT_DIM, rng) if joint is None else joint[start:stop]
            extra["joint_embedding"] = pa.FixedSizeListArray.from_arrays(rows.ravel(), joint_dim)
            extra["joint_model"] = pa.array([joint_model] * count)
        columns = {
            "image_id": pa.array(ids),
            "uri": pa.array([f"gs://bench-corpus/{i}.jpg" for i in ids]),
            "duplicate_uris": pa.array([[]] * count, pa.list_(pa.string())),
            "sha256": pa.array(["0" * 64] * count),
            "num_bytes": pa.array(np.full(count, 50_000, np.int64)),
            "width": pa.array(np.full(count, 640, np.int32)),
            "height": pa.array(np.full(count, 480, np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(embedding.ravel(), dim),
            "encoder": pa.array([encoder_id] * count),
            "metadata": pa.array(["{}"] * count),
            **extra,
        }
        table = pa.table(columns).select(schema.names).cast(schema)
        pq.write_table(table, out / "table" / f"embeddings-{f:05d}-of-{files:05d}.parquet")


def publish_v1(root: Path, n: int, write: Callable[[Path], None], config) -> None:
    """Version v1 of ``root``: ``write(out)`` writes its ``n``-row table, ``index.build``
    indexes it with ``config`` (a ``BuildConfig``), and the pointer names it."""
    from index.build import build_index
    from index.publish import version_dir, write_pointer

    out = Path(version_dir(str(root), "v1"))
    started = time.perf_counter()
    write(out)
    _log(f"wrote the {n}-row table in {time.perf_counter() - started:.0f} s; building ScaNN")
    started = time.perf_counter()
    build_index(str(out), config, {"inputs": n})
    _log(f"built both shards in {time.perf_counter() - started:.0f} s")
    write_pointer(str(root), "v1")


def build(work: Path, n: int, assets: Path) -> tuple[Path, Path]:
    """-> (publish root, models dir), building them unless ``work`` already holds them."""
    from encoders.base import EncoderSpec
    from encoders.registry import create_image_encoder
    from index.build import BuildConfig

    root, models = work / f"root-{n}", work / f"models-{n}"
    if (root / "latest.json").is_file() and models.is_dir():
        _log(f"reusing {root}")
        return root, models
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    spec = EncoderSpec(name="fake", weights="none", image_size=64)
    encoder_id = create_image_encoder(spec).encoder_id
    name, version = build_models(models, assets, encoder_id)
    publish_v1(
        root,
        n,
        lambda out: write_table(out, n, encoder_id, f"{name}/{version}"),
        BuildConfig("v1", spec.to_json(), k=10),
    )
    return root, models


def synthetic_setup(n: int) -> dict:
    return {
        "image_dim": IMAGE_DIM,
        "joint_dim": JOINT_DIM,
        "text_model": "bow + dual tower with random weights (synthetic)",
        "index": f"{n:,} images, synthetic clustered unit vectors ({CLUSTERS} clusters): "
        f"{IMAGE_DIM}-d image embeddings and {JOINT_DIM}-d joint embeddings",
        "queries": "bag-of-words text encoder (fitted on Flickr8k train captions) -> dual joint "
        f"model tower (random weights) -> ScaNN search of the {JOINT_DIM}-d joint shard",
    }


def build_real(
    work: Path,
    n: int,
    models_dir: Path,
    real_index: Path,
    storage: str = "float32",
    shards: int = 1,
) -> tuple[Path, dict]:
    """-> (publish root, setup): ``real_index``'s real embeddings grown to ``n``, their joint
    embeddings by ``models_dir``'s default joint model (the one the server will load); the
    image vectors stored and rescored as ``storage`` (``--embedding_storage`` and
    ``--index_quantize``), in ``shards`` index shards (each built from its slice of the table:
    one 1M-row build of both shards does not fit in 24 GiB)."""
    from benchmarks.bench_ann import grow_embeddings
    from index.build import BuildConfig
    from index.manifest import read_manifest
    from index.table import read_embedding_table, table_files
    from serving.state import QueryModels

    models = QueryModels.load(str(models_dir))
    name, version = models.model_version
    manifest = read_manifest(str(real_index))
    setup = {
        "image_dim": manifest.dim,
        "joint_dim": models.joint.dim,
        "text_model": f"{name}/{version}",
        "index": f"{n:,} images: real {manifest.dim}-d `{manifest.encoder_id}` embeddings of "
        f"the photos under {real_index} grown to {n:,} (as `bench_ann.py` grows them), and "
        f"their {models.joint.dim}-d joint embeddings by `{name}`; image vectors stored and "
        f"rescored as {storage}, {shards} index shard(s)",
        "queries": f"`{name}` (text encoder `{models.text_encoder.encoder_id}` -> its text "
        f"tower) -> ScaNN search of the {models.joint.dim}-d joint shard",
    }
    root = work / f"root-real-{n}{'' if storage == 'float32' else '-' + storage}-{shards}"
    if (root / "latest.json").is_file():
        _log(f"reusing {root}")
        return root, setup
    shutil.rmtree(root, ignore_errors=True)
    real = read_embedding_table(table_files(str(real_index))).embeddings
    grown, _ = grow_embeddings(real, n, real.shape[1], np.random.default_rng(0))
    joint = np.concatenate(
        [models.joint.embed_image_features(grown[i : i + 50_000]) for i in range(0, n, 50_000)]
    ).astype(np.float32)
    joint_model = f"{name}/{version}"

    def write(out: Path) -> None:
        nonlocal grown, joint  # dropped once written: the build reads the table back
        write_table(out, n, manifest.encoder_id, joint_model, image=grown, joint=joint,
                    storage=storage)  # fmt: skip
        grown = joint = None

    config = BuildConfig("v1", manifest.encoder_spec, k=10, num_shards=shards, quantize=storage)
    publish_v1(root, n, write, config)
    return root, setup


def link_version(root: Path, source: str, target: str) -> None:
    """Publish ``target`` as a hard-linked copy of ``source`` (immutable files, instant copy)."""
    from index.publish import write_pointer

    shutil.copytree(root / "versions" / source, root / "versions" / target, copy_function=os.link)
    write_pointer(str(root), target)


def wrk(url: str, connections: int, duration_s: int, script: Path) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency",
               "--timeout", f"{CLIENT_TIMEOUT_S}s", "-s", str(script), url]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    print(output, flush=True)
    return parse_wrk(output) | {"connections": connections, "raw": output}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> dict:
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    max_latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.MULTILINE)
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    qps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "requests": requests,
        "qps": qps,
        "p50_ms": _ms(latency["50"]),
        "p90_ms": _ms(latency["90"]),
        "p99_ms": _ms(latency["99"]),
        "max_ms": _ms(max_latency.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": socket.group(0) if socket else "none",
        "failed": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(g) for g in socket.groups()) if socket else 0),
    }


def wrk_script(path: Path, queries: list[str], k: int) -> None:
    import urllib.parse

    quoted = ",\n".join(json.dumps(urllib.parse.quote(q)) for q in queries)
    path.write_text(
        "local queries = {\n" + quoted + "\n}\n"
        "math.randomseed(7)\n"
        "request = function()\n"
        "  local q = queries[math.random(#queries)]\n"
        f'  return wrk.format("GET", "/api/search?k={k}&q=" .. q)\n'
        "end\n"
    )


def wait_ready(url: str, timeout_s: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("the server did not become ready")


def wait_words(url: str) -> float:
    """Seconds until the server's background word load (GloVe, then the joint vocabulary
    embedded by the text model: ~20 s of CPU with MiniLM) is done: an image-words request
    waits for it. The steady runs start after it, so they do not share the cores with it."""
    import httpx

    started = time.perf_counter()
    hit = httpx.get(url + "/api/search", params={"q": "a dog", "k": 1}, timeout=60).json()
    image_id = hit["results"][0]["image_id"]
    httpx.get(f"{url}/api/images/{image_id}/words", timeout=600)  # 503 (words off) is fine too
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "imgsearch-bench"))
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--reload-window", type=int, default=240, help="longest reload run, s")
    parser.add_argument("--report", default=str(REPO / "benchmarks/results/serving.md"))
    parser.add_argument("--json", default=str(REPO / "benchmarks/results/serving.json"))
    parser.add_argument("--models", default=None, help="a trained models dir: real text model")
    parser.add_argument(
        "--real-index", default=None, help="an index of real photos under --models' encoder"
    )
    parser.add_argument(
        "--storage",
        choices=("float32", "int8"),
        default="float32",
        help="with --models: the image vectors' table storage and ScaNN rescoring",
    )
    parser.add_argument("--index-shards", type=int, default=1, help="with --models")
    parser.add_argument(
        "--reload-in",
        choices=("process", "thread"),
        default="process",
        help="`imgsearch serve --reload-in`: a new worker process, or a thread of the server",
    )
    parser.add_argument(
        "--serve-args", default="", help="more `imgsearch serve` flags, e.g. '--text-cache-mb 256'"
    )
    args = parser.parse_args(argv)
    if bool(args.models) != bool(args.real_index):
        parser.error("--models and --real-index go together")
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: make wrk (Debian's package)")
    assets = settings.assets_dir()
    if assets is None:
        sys.exit(settings.describe_assets_layout())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.models:
        models = Path(args.models)
        root, setup = build_real(
            work, args.n, models, Path(args.real_index), args.storage, args.index_shards
        )
    else:
        root, models = build(work, args.n, assets)
        setup = synthetic_setup(args.n)
    for stale in (root / "versions").iterdir():  # a previous run's reload target
        if stale.name != "v1":
            shutil.rmtree(stale)
    from index.publish import write_pointer

    write_pointer(str(root), "v1")

    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    log = open(work / "server.log", "w")  # open as long as the server runs
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", "serve", "--index", str(root), "--models",
         str(models), "--port", str(args.port), "--poll-seconds", "1",
         "--reload-in", args.reload_in, *shlex.split(args.serve_args)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_ready(url)
        startup_s = time.perf_counter() - started
        _log(f"server ready in {startup_s:.1f} s")
        _log(f"its words loaded {wait_words(url):.1f} s later")
        import httpx
        import psutil

        from benchmarks.process_memory import tree_rss_bytes

        rss_mib = tree_rss_bytes(psutil.Process(server.pid)) / 2**20
        script = work / "queries.lua"
        wrk_script(script, query_captions(assets)[:2000], k=10)
        wrk(url, 4, 5, script)  # warm-up
        results = {}
        for name, connections in (("latency (2 connections)", 2), ("throughput (16)", 16)):
            results[name] = wrk(url, connections, args.duration, script)
            _log(f"{name}: {_row(results[name])}")

        # Hot reload under load: publish v2 a few seconds into a wrk run, keep the load on
        # until 10 s after the swap (or the window ends), then stop wrk (SIGINT: it prints
        # its figures for the whole run).
        load = subprocess.Popen(
            ["wrk", "-t1", "-c16", f"-d{args.reload_window}s", "--latency",
             "--timeout", f"{CLIENT_TIMEOUT_S}s", "-s", str(script), url],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(3)
        published = time.perf_counter()
        link_version(root, "v1", "v2")
        swapped_s, rss_peak = None, rss_mib
        while load.poll() is None:
            rss_peak = max(rss_peak, tree_rss_bytes(psutil.Process(server.pid)) / 2**20)
            if swapped_s is None:
                health = httpx.get(url + "/health", timeout=30).json()
                if health["serving"]["version"] == "v2":
                    swapped_s = time.perf_counter() - published
            elif time.perf_counter() - published > swapped_s + 10:
                load.send_signal(signal.SIGINT)
                break
            time.sleep(0.5)
        output = load.communicate()[0]
        print(output, flush=True)
        reload_run = parse_wrk(output) | {"connections": 16, "raw": output}
        results["during hot reload (16)"] = reload_run
        _log(f"during reload: {_row(reload_run)}; swapped after {swapped_s} s")
        final = httpx.get(url + "/health").json()
        rss_after = tree_rss_bytes(psutil.Process(server.pid)) / 2**20
    finally:
        server.terminate()
        server.wait(60)
        log.close()

    breakdown = in_process_breakdown(root, models, query_captions(assets)[:1000])
    memory = {"start": rss_mib, "peak": rss_peak, "after": rss_after}
    report = render(args, setup, results, startup_s, memory, swapped_s, final, breakdown)
    kinds = {"latency (2 connections)": "latency", "throughput (16)": "throughput",
             "during hot reload (16)": "reload"}  # fmt: skip
    figures = {
        "n": args.n,
        "image_dim": setup["image_dim"],
        "joint_dim": setup["joint_dim"],
        "text_model": setup["text_model"],
        "reload_in": args.reload_in,
        "rss_mib": round(rss_mib),
        "rss_peak_reload_mib": round(rss_peak),
        "rss_after_reload_mib": round(rss_after),
        "ready_s": round(startup_s, 1),
        "reload_swap_s": None if swapped_s is None else round(swapped_s, 1),
        "runs": [
            {"name": kinds[name], "connections": r["connections"], "qps": round(r["qps"], 1),
             "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "failed": r["failed"]}
            for name, r in results.items()
        ],
    }  # fmt: skip
    Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    report_path = Path(args.report)
    # bench_batch_queries.py writes its own section at the end: keep it.
    previous = report_path.read_text() if report_path.is_file() else ""
    marker = previous.find("<!-- bench_batch_queries.py")
    report_path.write_text(report + ("\n" + previous[marker:] if marker >= 0 else ""))
    print(report)
    return 0


def in_process_breakdown(root: Path, models: Path, captions: list[str]) -> dict[str, str]:
    """The same text queries without HTTP, after the server has exited: where the time goes."""
    from threadpoolctl import threadpool_limits

    from index.publish import resolve_index
    from serving import queries
    from serving.explain import embed_with_terms
    from serving.paging import PageRequest
    from serving.state import QueryModels, load_bundle

    threadpool_limits(1, user_api="blas")  # as `imgsearch serve` runs
    index_dir, version = resolve_index(str(root))
    bundle = load_bundle(index_dir, QueryModels.load(str(models)), version, verify=False)
    for caption in captions[:20]:
        queries.text_query(bundle, caption, PageRequest(10), None)
    timings: dict[str, list[float]] = {"whole query": [], "text encoder + tower": [], "ScaNN": []}
    for caption in captions:
        started = time.perf_counter()
        queries.text_query(bundle, caption, PageRequest(10), None)
        timings["whole query"].append(time.perf_counter() - started)
        started = time.perf_counter()
        vector = embed_with_terms(bundle.text, caption)[0]
        timings["text encoder + tower"].append(time.perf_counter() - started)
        started = time.perf_counter()
        bundle.text.search_embedded(vector, 10)
        timings["ScaNN"].append(time.perf_counter() - started)
    return {
        name: f"p50 {np.percentile(t, 50) * 1000:.2f} ms, p99 {np.percentile(t, 99) * 1000:.2f} ms"
        for name, t in timings.items()
    }


def _row(r: dict) -> str:
    return (
        f"{r['qps']:.0f} q/s, p50 {r['p50_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, "
        f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.0f} ms, {r['requests']} requests, "
        f"{r['failed']} failed (non-2xx {r['non_2xx']}, socket errors: {r['socket_errors']})"
    )


def render(args, setup, results, startup_s, memory, swapped_s, final, breakdown) -> str:
    if args.reload_in == "process":
        server = (
            "a supervisor process and one worker process serving (a reload loads in a "
            "second worker, which takes over once it listens; the old one drains)"
        )
        stall = (
            "The reload in a new worker: ScaNN's `load_searcher` (C++ behind pybind11) holds "
            "the GIL of the process that loads -- now the new worker, not the one answering -- "
            "so the reload costs the serving worker only the cores the new one uses while it "
            "starts (TensorFlow, the models, the version, the words). Run with `--reload-in "
            "thread` for the one-process reload beside it."
        )
    else:
        server = "one process that reloads in a background thread"
        stall = (
            "The reload's tail latency: ScaNN's `load_searcher` (C++ behind pybind11) holds "
            "Python's GIL while it deserializes a shard -- about 1.5 s for a 64-d shard and 3 s "
            "for a 256-d joint shard of 1M vectors on this machine (the synthetic index), "
            "measured with a 1 ms ticker thread -- so requests arriving then wait (they do not "
            "fail); everything else in a reload (checksums, Parquet, sorting) releases the GIL."
        )
    lines = [
        "# Search server under load (generated by benchmarks/bench_serving.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} on {platform.node()}: "
        f"{os.cpu_count()} cores, CPU only, shared with other jobs (1-minute load average at "
        f"the end: {os.getloadavg()[0]:.1f}); load generator and server on the same cores.",
        "",
        f"Index: {setup['index']}; Parquet table -> `index.build` (ScaNN tree + AH + exact "
        "rescoring, default parameters).",
        "Queries: `GET /api/search?q=<Flickr8k dev caption>&k=10` (2,000 distinct captions, "
        f"random order): {setup['queries']} -> per-word explanation -> JSON.",
        f"Server: `imgsearch serve --reload-in {args.reload_in}"
        f"{' ' + args.serve_args if args.serve_args else ''}`: {server}; loopback. Load: `wrk -t1` "
        f"with keep-alive, {args.duration} s per run after a 5 s warm-up, client timeout "
        f"{CLIENT_TIMEOUT_S} s; failed = non-2xx answers + socket errors (timeouts included).",
        "",
        "| run | connections | queries/s | p50 ms | p90 ms | p99 ms | max ms | requests | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['connections']} | {r['qps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.0f} | {r['requests']} | "
            f"{r['failed']} |"
        )
    swap = f"{swapped_s:.1f} s" if swapped_s is not None else "did not happen in the window"
    lines += [
        "",
        f"Start-up (process start to ready, {args.n:,} images, checksums verified): "
        f"{startup_s:.1f} s. Server RSS (every process of the server): {memory['start']:.0f} "
        f"MiB after start, {memory['peak']:.0f} MiB at the peak of the reload, "
        f"{memory['after']:.0f} MiB after it.",
        f"Hot reload: v2 published (pointer swap) 3 s into the run, load kept on until 10 s "
        f"after the swap; the server verified and loaded v2 in the background and swapped "
        f"after {swap}; serving "
        f"{final['serving']['version']} at the end, refused versions "
        f"{final['reload']['refused'] or 'none'}.",
        "",
        "Without HTTP (1,000 dev captions, one thread, same index; "
        "`serving.queries.text_query` builds the whole JSON answer): "
        + "; ".join(f"{name}: {figures}" for name, figures in breakdown.items())
        + ". The rest of a request's time is HTTP, the thread pool and sharing 2 cores with "
        "wrk.",
        "",
        stall,
        "",
        "Anchor: clip-retrieval's back-end reports about 50 ms per query and 20 queries/s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
