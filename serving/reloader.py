"""Hot reload: follow a publish root's pointer and swap in each new version whole.

``VersionHolder`` owns the reference to the serving ``IndexBundle``. A request reads it once
(``holder.current``) and keeps using that bundle, so a swap -- one reference assignment, atomic
in Python -- never changes a request half way; the old bundle is freed when the last request
holding it finishes. ``Reloader`` polls ``ROOT/latest.json`` in a daemon thread, loads and
verifies a new version off the request path, and swaps only when it loaded completely.

Reloads heal: a version that fails to load is refused and the current one keeps serving, but
the refusal is retried as soon as the version's files change (a repair republished under the
same name; ``index.publish.version_fingerprint``) and every ``RETRY_REFUSED_S`` in any case (a
storage hiccup). The reloader knows the version published as well as the one served, and since
when they differ (``/ready`` turns red past a grace period); an unreadable pointer is reported,
not fatal. Each version served is recorded in the root (``index.publish.mark_served``) for
``rollback`` and for ``load_first_version``: a server starting on a bad pointer serves the newest
version servers have served instead, and says so.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from index.publish import (
    fallback_versions,
    mark_served,
    read_pointer,
    resolve_index,
    version_dir,
    version_fingerprint,
)
from serving.state import IndexBundle

logger = logging.getLogger(__name__)

Served = TypeVar("Served")  # what a holder serves: an IndexBundle, or a supervisor's worker

# A refused version whose files did not change is tried again after this long anyway.
RETRY_REFUSED_S = 600.0
_REASON_CHARS = 2000


def _seconds_since(since: float | None, now: float | None = None) -> float | None:
    return None if since is None else (time.time() if now is None else now) - since


class LoadFailed(Exception):
    """A version failed to load somewhere else (a worker process, ``serving.supervisor``); the
    message is already the reason as that process wrote it (``ManifestVerificationError: ...``)."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, LoadFailed):
        return str(exc)[:_REASON_CHARS]
    return f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a version was refused, when, and the fingerprint of its files at the time."""

    reason: str
    at: float
    fingerprint: str | None


@dataclasses.dataclass(frozen=True)
class ReloadStatus:
    """What /health reports about reloading."""

    watching: str | None  # the publish root, or None for a fixed index folder
    last_check: float | None
    refused: dict[str, str]  # version -> why it was refused
    reloads: int
    published: str | None  # the version the pointer names (None: unreadable or absent)
    pointer_error: str | None  # why the pointer could not be read at the last check
    behind_since: float | None  # since when the published version is not the one served
    marker_error: str | None  # why the served marker could not be written (read-only root)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class ReloadView:
    """What a ``Reloader`` in another process reports, as the serving process shows it.

    A worker started by ``serving.supervisor`` serves one version and loads nothing itself;
    the supervisor's reloader pushes its status (``update``) and each result (``told``), so
    /health, /ready and /metrics answer as they do with the reloader in process. Duck-types
    ``Reloader.status`` and ``Reloader.behind_s``.
    """

    def __init__(self, status: ReloadStatus) -> None:
        self._status = status
        self._listeners: list[Callable[[str], None]] = []

    def status(self) -> ReloadStatus:
        return self._status

    def behind_s(self, now: float | None = None) -> float | None:
        return _seconds_since(self._status.behind_since, now)

    def update(self, status: ReloadStatus) -> None:
        self._status = status  # one reference assignment: readers see the old or the new

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def told(self, result: str) -> None:
        for listener in self._listeners:
            listener(result)


class VersionHolder(Generic[Served]):
    """The current bundle (or, in ``serving.supervisor``, worker); replaced by reference, never
    modified."""

    def __init__(self, bundle: Served) -> None:
        self._bundle = bundle
        self._lock = threading.Lock()

    @property
    def current(self) -> Served:
        return self._bundle

    def swap(self, bundle: Served) -> Served:
        """Serve ``bundle`` from now on; returns the one it replaces."""
        with self._lock:  # serialises swappers; readers never wait
            old, self._bundle = self._bundle, bundle
        return old

    def replace_if_current(self, expected: Served, bundle: Served) -> bool:
        """Serve ``bundle`` instead of ``expected``, unless a swap replaced it meanwhile."""
        with self._lock:
            if self._bundle is not expected:
                return False
            self._bundle = bundle
        return True


class Reloader:
    """Polls ``root``'s pointer every ``interval_s`` and swaps in new versions.

    ``load`` is ``(index_dir, version) -> IndexBundle`` (``serving.state.load_bundle`` bound to
    the process's models); ``on_result`` is told ``"swapped"``, ``"refused"`` or
    ``"pointer-error"`` (metrics). ``first`` is what happened before the reloader existed
    (``load_first_version``: a refused pointer version is not retried until its files change);
    ``verified``: whether loads check checksums (recorded in the served markers).
    """

    def __init__(
        self,
        root: str,
        holder: VersionHolder,
        load: Callable[[str, str], IndexBundle],
        interval_s: float,
        on_result: Callable[[str], None] = lambda result: None,
        first: FirstVersion | None = None,
        verified: bool = True,
    ) -> None:
        self.root, self.holder, self._load = root, holder, load
        self.interval_s = interval_s
        self._on_result = on_result
        self._verified = verified
        now = time.time()
        self._refused: dict[str, Refusal] = {
            version: Refusal(reason, now, self._fingerprint(version))
            for version, reason in (first.refused if first else {}).items()
        }
        self._pointer_error = first.pointer_error if first else None
        self._published = first.published if first else holder.current.version
        behind = self._published != holder.current.version
        self._behind_since: float | None = now if behind else None
        self._marker_error: str | None = None
        self._last_check: float | None = None
        self._reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    def status(self) -> ReloadStatus:
        return ReloadStatus(
            watching=self.root,
            last_check=self._last_check,
            refused={version: r.reason for version, r in self._refused.items()},
            reloads=self._reloads,
            published=self._published,
            pointer_error=self._pointer_error,
            behind_since=self._behind_since,
            marker_error=self._marker_error,
        )

    def behind_s(self, now: float | None = None) -> float | None:
        """How long the published version has not been the one served (None: it is)."""
        return _seconds_since(self._behind_since, now)

    def _fingerprint(self, version: str) -> str | None:
        try:
            return version_fingerprint(self.root, version)
        except (OSError, ValueError) as exc:  # cannot list: compare as "unchanged"
            logger.warning("cannot list the files of version %s: %s", version, exc)
            return None

    def record_served(self, version: str) -> None:
        """Leave the served marker for ``version`` (best effort: a read-only root is reported
        in /health, not fatal)."""
        try:
            if mark_served(self.root, version, self._verified):
                logger.info("recorded %s as served in %s", version, self.root)
            self._marker_error = None
        except Exception as exc:  # a read-only bucket, a permission: serving goes on
            self._marker_error = _reason(exc)
            logger.warning("cannot record %s as served in %s: %s", version, self.root, exc)

    def _should_try(self, version: str, now: float) -> tuple[bool, str | None]:
        """Whether to load ``version`` now, and its files' fingerprint."""
        refusal = self._refused.get(version)
        fingerprint = self._fingerprint(version)
        if refusal is None:
            return True, fingerprint
        if fingerprint != refusal.fingerprint:
            logger.info("the files of refused version %s changed: trying it again", version)
            return True, fingerprint
        if now - refusal.at >= RETRY_REFUSED_S:
            logger.info("trying refused version %s again (%.0f s since)", version, now - refusal.at)
            return True, fingerprint
        return False, fingerprint

    def check_once(self) -> str:
        """Read the pointer once -> "unchanged", "swapped", "refused" or "pointer-error"."""
        with self._check_lock:
            now = self._last_check = time.time()
            try:
                pointer = read_pointer(self.root)
                if pointer is None:
                    raise FileNotFoundError(f"{self.root} has no publish pointer any more")
                index_dir, version = resolve_index(self.root)
            except (OSError, ValueError) as exc:
                # A pointer being rewritten by hand or a storage hiccup: keep serving, retry later.
                self._pointer_error, self._published = _reason(exc), None
                if self._behind_since is None:
                    self._behind_since = now
                logger.warning("cannot read the publish pointer of %s: %s", self.root, exc)
                self._on_result("pointer-error")
                return "pointer-error"
            self._pointer_error, self._published = None, version
            if version == self.holder.current.version:
                self._behind_since = None
                return "unchanged"
            if self._behind_since is None:
                self._behind_since = now
            go, fingerprint = self._should_try(version, now)
            if not go:
                return "unchanged"
            logger.info("publish pointer names %s: loading it in the background", version)
            try:
                bundle = self._load(index_dir, version)
            except Exception as exc:  # any failure must leave the old version serving
                self._refused[version] = Refusal(_reason(exc), now, fingerprint)
                logger.error("refusing index version %s, still serving %s: %s",
                             version, self.holder.current.version, _reason(exc))  # fmt: skip
                self._on_result("refused")
                return "refused"
            old = self.holder.swap(bundle)
            self._refused.pop(version, None)
            self._reloads += 1
            self._behind_since = None
            logger.info("now serving index version %s (was %s)", version, old.version)
            self.record_served(version)
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


@dataclasses.dataclass(frozen=True)
class FirstVersion:
    """What a starting server serves, and what it refused on the way (``load_first_version``)."""

    bundle: IndexBundle
    publish_root: bool  # False: a plain index folder, served as it is
    published: str | None = None  # the version the pointer names (None: unreadable)
    refused: dict[str, str] = dataclasses.field(default_factory=dict)  # version -> why
    pointer_error: str | None = None  # why the pointer could not be read


def load_first_version(
    location: str, load: Callable[[str, str | None], IndexBundle]
) -> FirstVersion:
    """Load what ``location`` names: an index folder, or the version a publish root's pointer
    names -- or, when that pointer cannot be read or its version fails to load, the first of
    ``index.publish.fallback_versions`` that loads (the newest version servers have served,
    then the pointer's ``previous``), said in the log. With nothing to fall back to, the
    original error is raised (the server does not start)."""
    refused: dict[str, str] = {}
    pointer_error = version = None
    try:
        index_dir, version = resolve_index(location)
    except FileNotFoundError:
        raise  # neither a publish root nor an index folder: nothing to fall back on
    except (OSError, ValueError) as exc:  # the pointer is there but cannot be read
        failure, pointer_error = exc, _reason(exc)
    else:
        if version is None:
            return FirstVersion(load(index_dir, None), publish_root=False)
        try:
            return FirstVersion(load(index_dir, version), publish_root=True, published=version)
        except Exception as exc:  # any refusal: look for a version to serve instead
            failure, refused[version] = exc, _reason(exc)
    for candidate in fallback_versions(location, refused=version):
        try:
            bundle = load(version_dir(location, candidate), candidate)
        except Exception as exc:
            refused[candidate] = _reason(exc)
            logger.error("fallback version %s does not load either: %s", candidate, exc)
            continue
        problem = f"names {version}, which was refused" if version else "cannot be read"
        logger.error("the publish pointer of %s %s: serving %s instead, the newest version a "
                     "server has served", location, problem, candidate)  # fmt: skip
        return FirstVersion(bundle, True, version, refused, pointer_error)
    raise failure
