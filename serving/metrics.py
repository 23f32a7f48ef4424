"""Prometheus metrics of one server, in its own registry (several apps may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
            "Hot reload attempts by result (swapped, refused)",
            ["result"],
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

    def serving(self, version: str, images: int) -> None:
        self.index_version.clear()
        self.index_version.labels(version=version).set(1)
        self.index_images.set(images)
