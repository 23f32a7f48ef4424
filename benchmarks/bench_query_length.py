"""What a long text query costs the server: the whole ``GET /api/search`` and its explanation.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_query_length.py [--photos 60] [--repeats 20]``

Issue 24's probe found a 500-character query costing 0.4-0.65 s of CPU against 25 ms for "dog":
the explanation embedded the query with its 12 words in one MiniLM call, and a call pads every
row to its longest, so 13 rows ran at the query's length. ``encoders.minilm.length_chunks`` now
runs texts of very different lengths in separate calls.

1. Indexes ``--photos`` Flickr8k photos with the fake encoder and builds a dual joint model
   over MiniLM (the default recipe's text encoder; random tower weights: cost does not depend
   on what they learned).
2. Times ``GET /api/search?q=...&k=10`` in-process (FastAPI's TestClient, no sockets) for
   queries of 3 to 500 characters (real caption words, and a 500-character CJK query, which
   reaches MiniLM's 256-token cap), median of ``--repeats``.
3. Side by side in the same run, the MiniLM call alone: the query with its words as one padded
   batch (what the explanation did before) and what ``serving.explain.embed_with_terms`` sends
   now (words of at most 32 characters), as ``MiniLMEncoder.encode`` runs it.
4. Prints the figures with the machine and writes ``benchmarks/results/query_length.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine_line
from imgsearch import settings

MODEL = "dual-minilm-bench"
JOINT_DIM = 256


def _queries(assets: Path) -> dict[str, str]:
    words = []
    with (assets / "datasets/flickr8k/captions.tsv").open(encoding="utf-8") as lines:
        next(lines)
        for line, _ in zip(lines, range(400), strict=False):
            words += line.rstrip("\n").split("\t", 1)[1].lower().split()
    text = " ".join(words)
    return {
        "3 chars": "dog",
        "40 chars": text[:40].rsplit(" ", 1)[0],
        "200 chars": text[:200].rsplit(" ", 1)[0],
        "500 chars": text[:500].rsplit(" ", 1)[0],
        "500 chars, CJK (256 tokens)": ("狗在篮子里骑自行车戴眼镜" * 42)[:500],
    }


def build(work: Path, photos: int, assets: Path) -> tuple[Path, Path]:
    """A fake-encoder index of ``photos`` photos and a MiniLM dual model over it."""
    from encoders.joint import KIND_DUAL, DenseLayer, JointModel
    from encoders.text_registry import TextEncoderSpec, create_text_encoder
    from models.artifacts import save_joint_model
    from pipelines import index_job

    models, out = work / "models", work / "index"
    if not (out / "manifest.json").exists():
        images = sorted((assets / "datasets/flickr8k/images").glob("*.jpg"))[:photos]
        corpus = work / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in images))
        index_job.run(
            ["--corpus", str(corpus), "--out", str(out), "--encoder", "fake", "--weights",
             "none", "--image_size", "64", "--run_version", "q1"]
        )  # fmt: skip
    if not (models / MODEL).exists():
        spec = TextEncoderSpec("minilm", "auto")
        text = create_text_encoder(spec)
        rng = np.random.default_rng(0)

        def layer(inputs: int) -> DenseLayer:
            kernel = rng.standard_normal((inputs, JOINT_DIM)).astype(np.float32) / inputs**0.5
            return DenseLayer(kernel, np.zeros(JOINT_DIM, np.float32), "linear")

        model = JointModel(KIND_DUAL, text.encoder_id, "fake/v1", text.dim, 64,
                           text_layers=(layer(text.dim),), image_layers=(layer(64),))  # fmt: skip
        metadata = {
            "text_encoder": {**spec.to_json(), "encoder_id": text.encoder_id},
            "image_encoder": {"name": "fake", "image_size": 64, "encoder_id": "fake/v1"},
            "note": "benchmark model: random weights",
        }
        save_joint_model(models, MODEL, model, metadata)
    return out, models


def _median_ms(call, repeats: int) -> float:
    call()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "imgsearch-qlen"))
    parser.add_argument("--report", default=str(REPO / "benchmarks/results/query_length.md"))
    args = parser.parse_args(argv)
    assets = settings.assets_dir()
    if assets is None:
        raise SystemExit("no assets folder: " + settings.describe_assets_layout())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    index, models = build(work, args.photos, assets)

    from fastapi.testclient import TestClient
    from threadpoolctl import threadpool_limits

    from serving.app import create_app
    from serving.config import ServeConfig
    from serving.explain import MAX_TERM_CHARS, query_terms

    threadpool_limits(1, user_api="blas")  # as imgsearch serve runs
    config = ServeConfig(index=str(index), models_dir=str(models), joint_model=MODEL,
                         poll_interval_s=0, glove="none", decode_workers=0)  # fmt: skip
    rows = []
    with TestClient(create_app(config)) as client:
        encoder = client.app.state.models.text_encoder
        for name, query in _queries(assets).items():
            answer = client.get("/api/search", params={"q": query, "k": 10})
            assert answer.status_code == 200, answer.text
            request_ms = _median_ms(
                lambda q=query: client.get("/api/search", params={"q": q, "k": 10}), args.repeats
            )
            terms = query_terms(query)
            before = [query, *terms]  # one call, padded to 13 rows (serving.explain before)
            padded = np.asarray(before + [""] * (13 - len(before)), dtype=object)
            now = [query, *(t for t in terms if len(t) <= MAX_TERM_CHARS)]  # embed_with_terms
            before_ms = _median_ms(lambda p=padded: encoder._embed(p).numpy(), args.repeats)
            now_ms = _median_ms(lambda t=now: encoder.encode(t), args.repeats)
            tokens = encoder.tokenize([query])[0].shape[1]
            rows.append((name, len(query), tokens, request_ms, before_ms, now_ms))
    machine = machine_line()
    header = ("| query | characters | tokens | GET /api/search (ms) | MiniLM call, words padded "
              "to the query (before, ms) | MiniLM call now (ms) | ratio |")  # fmt: skip
    table = [header, "|---|---|---|---|---|---|---|"] + [
        f"| {n} | {c} | {t} | {r:.1f} | {b:.1f} | {w:.1f} | {b / w:.1f}x |"
        for n, c, t, r, b, w in rows
    ]
    print(machine)
    print("\n".join(table))
    report = [
        "# What a long text query costs",
        "",
        f"Generated by `benchmarks/bench_query_length.py` on {dt.date.today()}: {machine}. "
        f"{args.photos} Flickr8k photos (fake image encoder), a dual joint model over MiniLM "
        f"(random tower weights), one BLAS thread as `imgsearch serve` runs; medians of "
        f"{args.repeats} calls in-process (TestClient), both MiniLM columns measured side by "
        "side in this run. The request includes the explanation of every hit (each query word "
        "scored against it).",
        "",
        *table,
        "",
    ]
    Path(args.report).write_text("\n".join(report))
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
