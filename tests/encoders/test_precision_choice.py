"""encoders.precision_choice: when the index job runs the int8 encoder instead of the float one."""

from __future__ import annotations

import pytest

from encoders.base import EncoderSpec
from encoders.precision_choice import ChoiceContext, choose_encoder, int8_name

FLOAT = EncoderSpec(name="mobilenet_v2", weights="auto")
FILE = "/models/mobilenet_v2_int8.tflite"
CPU = ChoiceContext(workers_have_gpu=False, int8_weights=FILE)


def test_auto_on_cpu_workers_with_a_file_runs_int8() -> None:
    choice = choose_encoder(FLOAT, "auto", CPU)
    assert choice.spec == EncoderSpec(name="mobilenet_v2_int8", weights=FILE, image_size=224)
    assert "CPU workers" in choice.reason


@pytest.mark.parametrize(
    ("spec", "context", "why"),
    [
        (FLOAT, ChoiceContext(workers_have_gpu=True, int8_weights=FILE), "GPU"),
        (FLOAT, ChoiceContext(workers_have_gpu=False, int8_weights=None), "--int8_weights"),
        (EncoderSpec(name="resnet50"), CPU, "no int8 version"),
        (EncoderSpec(name="mobilenet_v2_flip"), CPU, "no int8 version"),
        (EncoderSpec(weights="/models/ft/encoder.weights.h5"), CPU, "not the stock"),
        (FLOAT, ChoiceContext(False, FILE, needs_pooled_features=True), "pooled features"),
        (FLOAT, ChoiceContext(False, FILE, pinned_by="joint model dual-tfidf"), "dual-tfidf"),
        (FLOAT, ChoiceContext(False, FILE, previous_encoder="mobilenet_v2"), "re-encode"),
    ],
)
def test_auto_keeps_the_float_encoder_where_int8_does_not_fit(spec, context, why) -> None:
    choice = choose_encoder(spec, "auto", context)
    assert choice.spec == spec
    assert why in choice.reason


def test_auto_follows_a_previous_version_that_was_int8_already() -> None:
    context = ChoiceContext(False, FILE, previous_encoder="mobilenet_v2_int8")
    assert choose_encoder(FLOAT, "auto", context).spec.name == "mobilenet_v2_int8"


def test_int8_forced_switches_a_nightly_run_and_refuses_what_cannot_work() -> None:
    switched = ChoiceContext(False, FILE, previous_encoder="mobilenet_v2")
    assert choose_encoder(FLOAT, "int8", switched).spec.name == "mobilenet_v2_int8"
    on_gpu = ChoiceContext(workers_have_gpu=True, int8_weights=FILE)
    assert choose_encoder(FLOAT, "int8", on_gpu).spec.name == "mobilenet_v2_int8"  # on purpose
    with pytest.raises(ValueError, match="pooled features"):
        choose_encoder(FLOAT, "int8", ChoiceContext(False, FILE, needs_pooled_features=True))
    with pytest.raises(ValueError, match="imgsearch quantize"):
        choose_encoder(FLOAT, "int8", ChoiceContext(False, None))
    with pytest.raises(ValueError, match="no int8 version"):
        choose_encoder(EncoderSpec(name="efficientnet_b0"), "int8", CPU)


def test_float32_and_named_int8_are_left_as_they_are() -> None:
    assert choose_encoder(FLOAT, "float32", CPU).spec == FLOAT
    named = EncoderSpec(name="mobilenet_v2_int8", weights=FILE)
    assert choose_encoder(named, "auto", CPU).spec == named
    with pytest.raises(ValueError, match="--precision"):
        choose_encoder(FLOAT, "bfloat16", CPU)


def test_int8_names() -> None:
    assert int8_name("mobilenet_v2") == "mobilenet_v2_int8"
    assert int8_name("resnet50") is None
