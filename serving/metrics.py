"""Prometheus metrics of one server, in its own registry (several apps may share a process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from serving.reloader import Reloader, ReloadView
    from serving.text_batcher import BatchingStats

# Search latency is a few milliseconds; thumbnails and uploads take longer.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imgsearch_requests",
            "HTTP requests by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imgsearch_request_seconds",
            "Request latency by route",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.reloads = Counter(
            "imgsearch_index_reloads",
            "Hot reload attempts by result (swapped, refused, pointer-error)",
            ["result"],
            registry=self.registry,
        )
        # Read from the reloader at each scrape (``follow``): alerts need no polling of /health.
        self.refused_versions = Gauge(
            "imgsearch_index_refused_versions",
            "Index versions this server refused to load (and has not served since)",
            registry=self.registry,
        )
        self.behind_seconds = Gauge(
            "imgsearch_index_behind_seconds",
            "Seconds since the published version stopped being the one served (0: it is)",
            registry=self.registry,
        )
        self.pointer_ok = Gauge(
            "imgsearch_index_pointer_ok",
            "1 when the publish pointer could be read at the last check, else 0",
            registry=self.registry,
        )
        self.index_images = Gauge(
            "imgsearch_index_images", "Images in the serving index version", registry=self.registry
        )
        self.index_version = Gauge(
            "imgsearch_index_version_info",
            "The serving index version (value 1)",
            ["version"],
            registry=self.registry,
        )
        self.thumbnail_cache = Counter(
            "imgsearch_thumbnail_cache",
            "Thumbnail cache lookups by result (hit, miss)",
            ["result"],
            registry=self.registry,
        )
        # The click log (serving/event_writer.py): every offered event is counted by what
        # happened to it, so a refusal is never silent.
        self.events = Counter(
            "imgsearch_events",
            "Click-log events posted, by result "
            "(accepted, invalid, off, buffer_full, disk_cap, closed)",
            ["result"],
            registry=self.registry,
        )
        self.events_written = Counter(
            "imgsearch_events_written", "Click-log events written to files", registry=self.registry
        )
        self.event_files = Counter(
            "imgsearch_event_files",
            "Click-log file writes by result (written, failed: retried)",
            ["result"],
            registry=self.registry,
        )
        self.events_buffered = Gauge(
            "imgsearch_events_buffered",
            "Click-log events accepted and not yet written",
            registry=self.registry,
        )

    def follow(self, reloader: Reloader | ReloadView) -> None:
        """Report ``reloader``'s refusals, lag and pointer state at each scrape."""
        self.refused_versions.set_function(lambda: len(reloader.status().refused))
        self.behind_seconds.set_function(lambda: reloader.behind_s() or 0.0)
        self.pointer_ok.set_function(lambda: 0.0 if reloader.status().pointer_error else 1.0)

    def follow_text_batching(self, stats: BatchingStats) -> None:
        """Report the text batcher's counts (``serving.text_batcher``) at each scrape: texts
        per encoder call is ``encoded_texts / encoder_calls``."""
        for field, help_text in (
            ("requests", "Text-encoding requests (one per text query)"),
            ("encoder_calls", "Batched calls of the text encoder"),
            ("encoded_texts", "Texts the text encoder encoded"),
            ("cache_hits", "Query texts and words answered from the LRU"),
            ("direct_calls", "Requests encoded outside the batcher (large or stalled)"),
            ("stalls", "Requests a batcher worker did not answer within stall_s"),
        ):
            gauge = Gauge(f"imgsearch_text_batching_{field}", help_text, registry=self.registry)
            gauge.set_function(lambda field=field: getattr(stats, field))

    def serving(self, version: str, images: int) -> None:
        self.index_version.clear()
        self.index_version.labels(version=version).set(1)
        self.index_images.set(images)
