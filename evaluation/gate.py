"""The publish gate: a candidate version may serve only if its metrics are not worse than the
published version's by more than a tolerance.

Pure logic over two ``metrics.json`` dicts (``imgsearch eval``'s output)::

    {"methods": {METHOD: {"text_to_image": {"R@1": 0.31, "R@5": ..., "MRR": ...}, ...}}, ...}

A metric is named ``direction/metric`` (``text_to_image/R@1``) and compared for every method
of the *published* report: a method the candidate lost fails the gate (its users would lose
it too); a method only the candidate has is new and passes. The tolerance is absolute (metrics
are fractions in [0, 1]): ``candidate >= published - tolerance``.

Two cases pass without comparing anything, each with its reason: nothing published yet (the
first version must be able to ship), and no eval set configured (``candidate`` is None). When
both reports name their eval ``dataset`` and the names differ, the numbers are not comparable
and the gate passes, saying so: a changed eval set must not block publishing forever.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

DEFAULT_METRICS = ("text_to_image/R@1", "text_to_image/R@10", "text_to_image/MRR")
DEFAULT_TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]  # why it failed, or why it passed without comparing
    compared: list[dict[str, Any]]  # {"method", "metric", "candidate", "published", "ok"}

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _metric(report: dict[str, Any], method: str, name: str) -> float | None:
    direction, _, metric = name.partition("/")
    value = report.get("methods", {}).get(method, {}).get(direction, {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def check_gate(
    candidate: dict[str, Any] | None,
    published: dict[str, Any] | None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GateResult:
    """Compare ``candidate`` with ``published`` (either may be None); see the module docstring."""
    if tolerance < 0:
        raise ValueError(f"gate tolerance must be >= 0, got {tolerance}")
    for name in metrics:
        if "/" not in name:
            raise ValueError(f"gate metrics are 'direction/metric', e.g. text_to_image/R@1: {name}")
    if candidate is None:
        return GateResult(True, ["no eval set configured: nothing to compare"], [])
    if published is None:
        return GateResult(True, ["nothing published yet (or it has no eval report)"], [])
    if not isinstance(candidate.get("methods"), dict) or not candidate["methods"]:
        return GateResult(False, ["candidate eval report has no 'methods'"], [])
    ours, theirs = candidate.get("dataset"), published.get("dataset")
    if isinstance(ours, str) and isinstance(theirs, str) and ours != theirs:
        return GateResult(True, [f"eval sets differ ({theirs!r} -> {ours!r}): not compared"], [])

    reasons: list[str] = []
    compared: list[dict[str, Any]] = []
    for method in sorted(published.get("methods", {})):
        for name in metrics:
            before = _metric(published, method, name)
            if before is None:
                continue  # the published version never measured it: nothing to regress from
            after = _metric(candidate, method, name)
            ok = after is not None and after >= before - tolerance
            compared.append(
                {"method": method, "metric": name, "candidate": after, "published": before,
                 "ok": ok}
            )  # fmt: skip
            if after is None:
                reasons.append(f"{method} {name}: missing from the candidate (published {before})")
            elif not ok:
                reasons.append(
                    f"{method} {name}: {after:.4f} < published {before:.4f} - tolerance {tolerance}"
                )
    return GateResult(not reasons, reasons, compared)
