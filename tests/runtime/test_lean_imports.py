"""TensorFlow loads without scikit-learn and matplotlib, which import normally afterwards (in a
fresh process: the test process has TensorFlow loaded already)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from runtime.lean_imports import skip_keras_extras
skip_keras_extras()
import tensorflow as tf
from tensorflow.keras.applications import MobileNetV2
during = {name: name in sys.modules for name in ("sklearn", "matplotlib")}
import keras.src.wrappers.fixes as fixes
import sklearn, matplotlib.pyplot
print(json.dumps({
    "during": during,
    "keras_sees_sklearn": fixes.sklearn is not None,
    "finder_left": [type(f).__name__ for f in sys.meta_path if "Keras" in type(f).__name__],
    "after": [m in sys.modules for m in ("sklearn", "matplotlib.pyplot")],
    "model_builds": MobileNetV2(weights=None, input_shape=(32, 32, 3)).count_params() > 0,
}))
"""


def test_tensorflow_loads_without_the_keras_extras_which_import_later() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["during"] == {"sklearn": False, "matplotlib": False}
    assert not found["keras_sees_sklearn"]  # Keras took scikit-learn as absent
    assert found["finder_left"] == []  # stepped aside once TensorFlow had loaded
    assert found["after"] == [True, True] and found["model_builds"]


def test_skip_is_a_no_op_once_tensorflow_is_loaded() -> None:
    import tensorflow  # noqa: F401  (the test process has it, as any later caller would)

    from runtime.lean_imports import skip_keras_extras

    before = list(sys.meta_path)
    skip_keras_extras()
    assert sys.meta_path == before
