"""The steps of the nightly reindex around the Beam job, as plain functions of a publish root.

``dags/imgsearch_nightly_index.py`` only wires these into Airflow tasks, so each step is
tested without a scheduler and behaves the same when an operator runs it by hand. Every step
is idempotent for one version name (the DAG derives it from the logical date): a retry or a
rerun finds the work done, or redoes it into the same place with the same result.

    plan_run   which version this run writes, which published version it builds on, and
               whether the version is already complete (then the index job is skipped)
    evaluate   ``python -m evaluation.eval_job`` into ``VERSION/eval`` (only with an eval set)
    run_gate   the candidate's metrics against the published version's -> ``VERSION/eval/gate.json``
    publish    verify the version's files, then swap ``ROOT/latest.json`` to it
    notify     serving follows ``latest.json``, so publishing is the notification; an optional
               reload URL is POSTed to as well, for servers that should switch at once
    retention  delete complete versions beyond the newest N (never the current or previous one)
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems

from evaluation.gate import DEFAULT_METRICS, DEFAULT_TOLERANCE, GateResult, check_gate
from index.manifest import MANIFEST_NAME, read_manifest
from index.publish import prune_versions, publish_version, read_pointer, version_dir
from storage.files import read_json, write_json

logger = logging.getLogger(__name__)

EVAL_DIR = "eval"

METRICS_NAME = "metrics.json"

GATE_NAME = "gate.json"

EVAL_MODULE = "evaluation.eval_job"


class GateFailed(Exception):
    """The candidate version is worse than the published one: it must not be published."""


def _read_json(path: str) -> Any | None:
    """The JSON at ``path``, or None when a step has not written it (no eval set, no gate)."""
    if not FileSystems.exists(path):
        return None
    return read_json(path)


def _complete(path: str) -> bool:
    return FileSystems.exists(FileSystems.join(path, MANIFEST_NAME))


def plan_run(root: str, version: str) -> dict[str, Any]:
    """What this run does: ``{"version", "version_dir", "previous", "previous_version",
    "complete"}``.

    ``previous`` is the folder whose rows the job may reuse: the published version, or the one
    before it when this very version is the published one (a rerun after publishing must not
    read the folder it is about to rewrite); "" when nothing complete is published (a full run).
    """
    target = version_dir(root, str(version))
    pointer = read_pointer(root)
    base = None
    if pointer is not None:
        base = pointer.version if pointer.version != str(version) else pointer.previous
    previous = version_dir(root, base) if base else ""
    if previous and not _complete(previous):
        logger.warning("published base %s has no manifest: indexing %s in full", previous, version)
        previous, base = "", None
    plan = {
        "version": str(version),
        "version_dir": target,
        "previous": previous,
        "previous_version": base or "",
        "complete": _complete(target),
    }
    logger.info("nightly plan: %s", plan)
    return plan


def eval_argv(
    dataset: str,
    index_dir: str,
    models: str = "",
    extra: Sequence[str] = (),
    python: str = "",
    encoder_spec: dict[str, Any] | None = None,
) -> list[str]:
    """The ``imgsearch eval`` command line for one version (its report goes to ``INDEX/eval``).

    The eval job indexes the eval set itself, through the real index pipeline, with the image
    encoder that made the version (``encoder_spec`` from its manifest) and the same models, so
    the figures measure what this version would serve.
    """
    argv = [python or sys.executable, "-m", EVAL_MODULE, "--dataset", dataset]
    argv += ["--out", FileSystems.join(index_dir, EVAL_DIR)]
    if models:
        argv += ["--models", models]
    if encoder_spec:
        argv += ["--encoder", str(encoder_spec["name"]), "--weights", str(encoder_spec["weights"])]
    return argv + [str(arg) for arg in extra]


def evaluate(
    version_path: str, dataset: str, models: str = "", extra: Sequence[str] = ()
) -> dict[str, Any] | None:
    """Run the eval job on a complete version; None (and a log line) with no eval set."""
    if not dataset:
        logger.info("no eval set configured (eval_dataset is empty): the gate will pass")
        return None
    manifest = read_manifest(version_path)  # FileNotFoundError: never evaluate a partial version
    argv = eval_argv(dataset, version_path, models, extra, encoder_spec=manifest.encoder_spec)
    logger.info("evaluating: %s", " ".join(argv))
    subprocess.run(argv, check=True)
    metrics = _read_json(FileSystems.join(version_path, EVAL_DIR, METRICS_NAME))
    if metrics is None:
        raise FileNotFoundError(f"{' '.join(argv[:3])} wrote no {EVAL_DIR}/{METRICS_NAME}")
    return metrics


def run_gate(
    root: str,
    version: str,
    evaluated: bool,
    metrics: Sequence[str] = DEFAULT_METRICS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GateResult:
    """Gate ``version`` against what serves now; writes ``VERSION/eval/gate.json``.

    Raises GateFailed with every reason when it fails. ``evaluated`` False means no eval set was
    configured, which passes (a stale ``metrics.json`` left in the folder is not trusted).
    """
    target = version_dir(root, version)
    manifest = read_manifest(target)
    pointer = read_pointer(root)
    if manifest.counts.get("indexed", 0) <= 0:
        result = GateResult(False, ["the candidate table is empty"], [])
    elif pointer is not None and pointer.version == version:
        result = GateResult(True, [f"{version} is already the published version"], [])
    else:
        candidate = None
        if evaluated:
            candidate = _read_json(FileSystems.join(target, EVAL_DIR, METRICS_NAME))
            if candidate is None:
                raise FileNotFoundError(f"{target}/{EVAL_DIR}/{METRICS_NAME} is missing")
        published = None
        if pointer is not None:
            published_dir = version_dir(root, pointer.version)
            published = _read_json(FileSystems.join(published_dir, EVAL_DIR, METRICS_NAME))
        result = check_gate(candidate, published, metrics, tolerance)
    write_json(FileSystems.join(target, EVAL_DIR, GATE_NAME), result.to_json())
    logger.info("gate %s: %s", "passed" if result.passed else "FAILED", "; ".join(result.reasons))
    if not result.passed:
        raise GateFailed(f"{version} not published: " + "; ".join(result.reasons))
    return result


def publish(root: str, version: str) -> dict[str, Any]:
    """Verify every file of the version against its manifest, then switch the pointer."""
    return publish_version(root, version, verify=True).to_json()


def notify(root: str, version: str, reload_url: str = "", timeout_s: float = 30.0) -> str:
    """Tell serving a new version is live. Publishing already did (servers read ``latest.json``
    of ``root``); with ``reload_url``, POST ``{"root", "version"}`` to it too.
    """
    if not reload_url:
        logger.info("published %s: serving picks it up from %s/latest.json", version, root)
        return "pointer"
    body = json.dumps({"root": root, "version": version}).encode("utf-8")
    request = urllib.request.Request(
        reload_url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        status = response.status
    logger.info("asked %s to reload %s: HTTP %s", reload_url, version, status)
    return f"http {status}"


def retention(root: str, keep: int) -> list[str]:
    """Delete old complete versions, keeping ``keep`` (and the current and previous ones)."""
    return prune_versions(root, keep)
