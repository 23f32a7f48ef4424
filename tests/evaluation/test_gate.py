"""The publish gate: pure comparisons of two eval reports."""

from __future__ import annotations

import pytest

from evaluation.gate import check_gate


def _report(r1: float, r10: float = 0.8, mrr: float = 0.5, method: str = "dual", **extra) -> dict:
    return {"methods": {method: {"text_to_image": {"R@1": r1, "R@10": r10, "MRR": mrr}}}, **extra}


def test_passes_when_nothing_is_published_or_no_eval_set():
    first = check_gate(_report(0.1), None)
    assert first.passed and "nothing published" in first.reasons[0]
    unconfigured = check_gate(None, _report(0.9))
    assert unconfigured.passed and "no eval set configured" in unconfigured.reasons[0]


def test_within_tolerance_passes_and_beyond_fails_with_every_reason():
    published = _report(0.30, r10=0.80, mrr=0.50)
    ok = check_gate(_report(0.295, r10=0.85, mrr=0.50), published, tolerance=0.01)
    assert ok.passed and ok.reasons == [] and len(ok.compared) == 3
    bad = check_gate(_report(0.25, r10=0.70, mrr=0.50), published, tolerance=0.01)
    assert not bad.passed
    assert len(bad.reasons) == 2
    assert "dual text_to_image/R@1: 0.2500 < published 0.3000" in bad.reasons[0]
    assert "R@10" in bad.reasons[1]
    assert [c["ok"] for c in bad.compared] == [False, False, True]


def test_zero_tolerance_allows_equal_but_not_lower():
    assert check_gate(_report(0.3), _report(0.3), tolerance=0.0).passed
    assert not check_gate(_report(0.2999), _report(0.3), tolerance=0.0).passed


def test_a_lost_method_or_metric_fails_a_new_one_passes():
    published = _report(0.3)
    published["methods"]["w2vv"] = {"text_to_image": {"R@1": 0.2}}
    lost = check_gate(_report(0.3), published)
    assert not lost.passed and "w2vv text_to_image/R@1: missing" in lost.reasons[0]
    gained = _report(0.3)
    gained["methods"]["new"] = {"text_to_image": {"R@1": 0.0}}
    assert check_gate(gained, _report(0.3)).passed
    assert not check_gate({"methods": {}}, published).passed


def test_metrics_the_published_version_never_measured_are_skipped():
    published = {"methods": {"dual": {"text_to_image": {"R@1": 0.3}}}}
    result = check_gate(_report(0.3), published, metrics=["text_to_image/R@1", "image_to_text/R@1"])
    assert result.passed and len(result.compared) == 1


def test_different_eval_sets_are_not_compared():
    result = check_gate(_report(0.1, dataset="coco"), _report(0.9, dataset="flickr8k"))
    assert result.passed and "eval sets differ" in result.reasons[0]


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="tolerance"):
        check_gate(_report(0.3), _report(0.3), tolerance=-0.1)
    with pytest.raises(ValueError, match="direction/metric"):
        check_gate(_report(0.3), _report(0.3), metrics=["R@1"])
