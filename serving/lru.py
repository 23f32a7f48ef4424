"""A thread-safe least-recently-used map: what the server's caches (thumbnails, filter masks,
text-encoder rows) share."""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """Key -> value; past ``capacity`` entries the least recently used goes (0 keeps nothing).

    ``hits`` and ``misses`` count the lookups that found a value and those that did not.
    Values are computed outside the lock by the caller, so two concurrent misses of one key may
    both compute it; the later ``put`` wins.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = self.misses = 0
        self._values: collections.OrderedDict[str, V] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            value = self._values.get(key)
            if value is None:
                self.misses += 1
                return None
            self._values.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: V) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self.capacity:
                self._values.popitem(last=False)

    def __len__(self) -> int:
        return len(self._values)
