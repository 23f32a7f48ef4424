"""What the click log costs: ``POST /api/events`` throughput and p99, and one flush.

Run: ``.venv/bin/python benchmarks/bench_events.py [--duration 5] [--report PATH]``

1. Indexes 8 generated images with the fake encoder (the route does not depend on the index)
   and starts ``imgsearch serve --events DIR`` (one process, one uvicorn worker) on loopback.
2. Drives ``POST /api/events`` (a click event, 125 bytes of JSON) with ``wrk`` (Debian package;
   one thread, keep-alive) at 1 connection (latency) and 16 (throughput), default limits
   (a file per 1000 events or 60 s, 10,000 events in memory).
3. Stops the server with SIGTERM (the lifespan flush) and checks that the files hold exactly
   the events answered 202, and reads the accepted/refused counters.
4. Times the writer in-process: building the Parquet bytes of a batch and writing it with the
   temp-then-rename helper, for batches of 100, 1,000 and 10,000 events.

Figures are printed and written to ``--report`` (markdown); nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_serving import parse_wrk

from benchmarks.machine import machine_line
from serving.event_log import EventLimits, parse_event
from serving.event_writer import EventWriter, event_files, parquet_bytes, read_events
from storage.files import replace_by_rename

CLICK = {
    "kind": "click",
    "query_kind": "text",
    "query": "a dog running on the grass",
    "version": "v1",
    "image_id": "0123456789abcdef0123",
    "rank": 3,
    "session": "0a1b2c3d4e5f6071",
}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_index(work: Path) -> Path:
    from PIL import Image

    from pipelines import index_job

    photos = work / "photos"
    photos.mkdir()
    for n in range(8):
        Image.new("RGB", (64, 48), (30 * n, 255 - 30 * n, 90)).save(photos / f"{n}.png")
    out = work / "index"
    index_job.run(["--corpus", str(photos), "--out", str(out), "--encoder", "fake",
                   "--weights", "none", "--image_size", "64", "--run_version", "v1"])  # fmt: skip
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wrk(url: str, connections: int, duration_s: int, script: Path) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency",
               "-s", str(script), url + "/api/events"]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    print(output, flush=True)
    return parse_wrk(output) | {"connections": connections}


def counters(url: str) -> dict[str, float]:
    import httpx

    found = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        match = re.match(r'imgsearch_events_total\{result="(\w+)"\} (\S+)', line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def serve_and_load(work: Path, index: Path, duration_s: int) -> dict:
    events = work / "events"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", "serve", "--index", str(index), "--port",
         str(port), "--events", str(events)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(CLICK))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    wrk(url, 4, 2, script)  # warm-up
    # Three runs each, the median run reported (by requests/s) with the range: wrk shares the
    # cores with the server, so on a small machine single runs vary a lot.
    runs = {}
    for connections in (1, 16):
        tries = sorted((wrk(url, connections, duration_s, script) for _ in range(3)),
                       key=lambda run: run["qps"])  # fmt: skip
        runs[connections] = tries[1] | {"qps_range": (tries[0]["qps"], tries[-1]["qps"])}
    seen = counters(url)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)
    log.close()
    rows = len(read_events(str(events)))
    return {
        "runs": runs,
        "counters": seen,
        "rows": rows,
        "files": len(event_files(str(events))),
    }


def flush_costs(work: Path) -> list[dict]:
    event = parse_event(json.dumps(CLICK).encode(), 4096)
    results = []
    for size in (100, 1000, 10_000):
        writer = EventWriter(
            str(work / f"flush-{size}"),
            EventLimits(flush_events=size, max_buffer_events=max(size, 10_000)),
        )
        for _ in range(size):
            writer.offer(event, "v1")
        rows = writer.batcher.take()
        encode, write, payload = [], [], b""
        for n in range(7):
            started = time.perf_counter()
            payload = parquet_bytes(rows)
            encoded = time.perf_counter()
            replace_by_rename(str(work / f"flush-{size}"), f"events-{n}.parquet", payload)
            encode.append(encoded - started)
            write.append(time.perf_counter() - encoded)
        offer = []
        for _ in range(5):
            fresh = EventWriter(
                str(work / "offer"), EventLimits(flush_events=size, max_buffer_events=size)
            )
            started = time.perf_counter()
            for _ in range(size):
                fresh.offer(event, "v1")
            offer.append((time.perf_counter() - started) / size)
        results.append(
            {
                "events": size,
                "encode_ms": statistics.median(encode) * 1000,
                "write_ms": statistics.median(write) * 1000,
                "bytes": len(payload),
                "offer_us": statistics.median(offer) * 1e6,
            }
        )
        _log(f"flush of {size}: {results[-1]}")
    return results


def report(machine: str, served: dict, flushes: list[dict], duration_s: int) -> str:
    lines = [
        "# Click log: `POST /api/events` and the flush",
        "",
        f"Measured {dt.date.today().isoformat()} by `benchmarks/bench_events.py` "
        f"(`--duration {duration_s}`) on {machine}.",
        "",
        "Server: `imgsearch serve --events DIR` (one process, one uvicorn worker, loopback, "
        "default limits: a file per 1,000 events or 60 s, 10,000 events in memory). Load: "
        "`wrk -t1` posting one 125-byte click event per request, keep-alive, on the same "
        "machine as the server (it takes one of the cores); latencies are of the median run.",
        "",
        "| connections | requests/s (median of 3) | range of 3 | p50 ms | p90 ms | p99 ms "
        "| max ms | non-2xx |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for connections, run in served["runs"].items():
        lines.append(
            f"| {connections} | {run['qps']:,.0f} | {run['qps_range'][0]:,.0f}-"
            f"{run['qps_range'][1]:,.0f} | {run['p50_ms']:.2f} | {run['p90_ms']:.2f} | "
            f"{run['p99_ms']:.2f} | {run['max_ms']:.1f} | {run['non_2xx']} |"
        )
    seen = served["counters"]
    lines += [
        "",
        f"Counters at the end of the load: accepted {seen.get('accepted', 0):,.0f}, "
        f"buffer_full {seen.get('buffer_full', 0):,.0f}, disk_cap {seen.get('disk_cap', 0):,.0f}. "
        f"After SIGTERM (the lifespan flush) the folder held {served['rows']:,} events in "
        f"{served['files']} files: every accepted event "
        f"({'all there' if served['rows'] == seen.get('accepted') else 'MISMATCH'}).",
        "",
        "Flush, in-process (median of 7): build the Parquet bytes (explicit schema, zstd), then "
        "`storage.files.replace_by_rename` (temp file, rename) on local disk; `offer` is the "
        "per-event cost of putting an event in the buffer (row building + lock), median of 5.",
        "",
        "| events per file | encode ms | write ms | bytes | bytes/event | offer µs/event |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for f in flushes:
        lines.append(
            f"| {f['events']:,} | {f['encode_ms']:.2f} | {f['write_ms']:.2f} | {f['bytes']:,} | "
            f"{f['bytes'] / f['events']:.1f} | {f['offer_us']:.1f} |"
        )
    lines += [
        "",
        "The flush runs on the writer thread, not in a request; it holds the GIL while pyarrow "
        "builds the table from Python dicts, which is what a request waits on during a flush.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--report", default=str(REPO / "benchmarks/results/events.md"))
    args = parser.parse_args()
    machine = machine_line()
    _log(machine)
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        work = Path(tmp)
        index = build_index(work)
        served = serve_and_load(work, index, args.duration)
        flushes = flush_costs(work)
    text = report(machine, served, flushes, args.duration)
    print(text)
    Path(args.report).write_text(text)
    _log(f"wrote {args.report}")


if __name__ == "__main__":
    main()
