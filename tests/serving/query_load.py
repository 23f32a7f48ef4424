"""Threads that send search queries to a live server until stopped, keeping every non-200 and
the slowest answer."""

from __future__ import annotations

import threading
import time

import httpx

SEARCH, SIMILAR, UPLOAD = "search", "similar", "upload"


class QueryLoad:
    """Query ``i`` of a thread is ``kinds[i % len(kinds)]``: a text search, a similar-image
    query over ``image_ids`` or an image upload (``upload``, JPEG bytes)."""

    def __init__(
        self,
        url: str,
        image_ids: list[str],
        kinds: tuple[str, ...],
        upload: bytes | None = None,
        threads: int = 4,
    ) -> None:
        if UPLOAD in kinds and upload is None:
            raise ValueError("upload queries need the bytes to upload")
        self.url, self.image_ids, self.kinds, self.upload = url, image_ids, kinds, upload
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.slowest_s = 0.0  # the longest any one request took, answered or not
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _one(self, client: httpx.Client, i: int) -> httpx.Response:
        kind = self.kinds[i % len(self.kinds)]
        if kind == SEARCH:
            return client.get("/api/search", params={"q": "a dog on grass", "k": 5})
        if kind == SIMILAR:
            image_id = self.image_ids[i % len(self.image_ids)]
            return client.get(f"/api/similar/{image_id}", params={"k": 3})
        return client.post(
            "/api/search/image?k=3", content=self.upload, headers={"content-type": "image/jpeg"}
        )

    def _run(self, seed: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = seed
            while not self._stop.is_set():
                i += 1
                started = time.perf_counter()
                try:
                    response = self._one(client, i)
                    ok = response.status_code == 200
                    detail = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, repr(exc)
                took = time.perf_counter() - started
                with self._lock:
                    self.slowest_s = max(self.slowest_s, took)
                    if ok:
                        self.ok += 1
                        self.versions.add(response.json()["version"])
                    else:
                        self.failures.append(detail)

    def __enter__(self) -> QueryLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
