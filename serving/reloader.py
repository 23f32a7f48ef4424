"""Hot reload: follow a publish root's pointer and swap in each new version whole.

``VersionHolder`` owns the reference to the serving ``IndexBundle``. A request reads it once
(``holder.current``) and keeps using that bundle, so a swap -- one reference assignment, atomic
in Python -- never changes a request half way; the old bundle is freed when the last request
holding it finishes. ``Reloader`` polls ``ROOT/latest.json`` in a daemon thread, loads and
verifies a new version off the request path, and swaps only when it loaded completely. A
version that fails to load is remembered as refused (not retried until the pointer names
another version) and the current one keeps serving.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from index.publish import read_pointer, resolve_index
from serving.state import IndexBundle

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReloadStatus:
    """What /health reports about reloading."""

    watching: str | None  # the publish root, or None for a fixed index folder
    last_check: float | None
    refused: dict[str, str]  # version -> why it was refused
    reloads: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class VersionHolder:
    """The current bundle; replaced by reference, never modified."""

    def __init__(self, bundle: IndexBundle) -> None:
        self._bundle = bundle
        self._lock = threading.Lock()

    @property
    def current(self) -> IndexBundle:
        return self._bundle

    def swap(self, bundle: IndexBundle) -> IndexBundle:
        """Serve ``bundle`` from now on; returns the one it replaces."""
        with self._lock:  # serialises swappers; readers never wait
            old, self._bundle = self._bundle, bundle
        return old


class Reloader:
    """Polls ``root``'s pointer every ``interval_s`` and swaps in new versions.

    ``load`` is ``(index_dir, version) -> IndexBundle`` (``serving.state.load_bundle`` bound to
    the process's models); ``on_result`` is told ``"swapped"`` or ``"refused"`` (metrics).
    """

    def __init__(
        self,
        root: str,
        holder: VersionHolder,
        load: Callable[[str, str], IndexBundle],
        interval_s: float,
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.root, self.holder, self._load = root, holder, load
        self.interval_s = interval_s
        self._on_result = on_result
        self._refused: dict[str, str] = {}
        self._last_check: float | None = None
        self._reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    def status(self) -> ReloadStatus:
        return ReloadStatus(self.root, self._last_check, dict(self._refused), self._reloads)

    def check_once(self) -> str:
        """Read the pointer once -> "unchanged", "swapped", "refused" or "pointer-error"."""
        with self._check_lock:
            self._last_check = time.time()
            try:
                pointer = read_pointer(self.root)
                if pointer is None:
                    raise FileNotFoundError(f"{self.root} has no publish pointer any more")
                index_dir, version = resolve_index(self.root)
            except (OSError, ValueError) as exc:
                # A pointer being rewritten by hand or a storage hiccup: keep serving, retry later.
                logger.warning("cannot read the publish pointer of %s: %s", self.root, exc)
                return "pointer-error"
            if version == self.holder.current.version or version in self._refused:
                return "unchanged"
            logger.info("publish pointer moved to %s: loading it in the background", version)
            try:
                bundle = self._load(index_dir, version)
            except Exception as exc:  # any failure must leave the old version serving
                reason = f"{type(exc).__name__}: {exc}"
                self._refused[version] = reason[:2000]
                logger.error("refusing index version %s, still serving %s: %s",
                             version, self.holder.current.version, reason)  # fmt: skip
                self._on_result("refused")
                return "refused"
            old = self.holder.swap(bundle)
            self._reloads += 1
            logger.info("now serving index version %s (was %s)", version, old.version)
            self._on_result("swapped")
            return "swapped"

    def start(self) -> None:
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="index-reloader", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # the watcher thread must outlive any one failure
                logger.exception("index reload check failed")
