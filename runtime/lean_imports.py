"""TensorFlow's import without the optional packages Keras loads on the way, for entry points.

Keras 3 (TensorFlow 2.20's ``tf.keras``) imports scikit-learn (for its ``keras.wrappers``
estimators) and ``matplotlib.pyplot`` (for ``keras.visualization``) while TensorFlow loads,
whenever they are installed -- and both are installed here (the evaluation report plots with
matplotlib). That is 1.1-1.7 s of every process that imports TensorFlow on 2 cores (3.4-4.0 s
against 2.3 s without them, ``python -X importtime``): the index job's incremental run, each
serving worker, every CLI command with a model. Neither Keras feature is used here, and Keras
treats both packages as absent when their import fails (``sklearn = None``, ``plt = None``).

``skip_keras_extras()`` installs an import finder that refuses the two packages only while
TensorFlow or Keras is in the middle of its first import, and removes itself once either has
loaded; afterwards scikit-learn and matplotlib import as usual for whoever needs them. An
import of either by another thread during those two seconds would fail too: nothing in this
project's processes imports them while a model loads. Entry points only; library code and
tests import TensorFlow the usual way.
"""

from __future__ import annotations

import importlib.abc
import sys

HIDDEN = ("sklearn", "matplotlib")
_WATCHED = ("tensorflow", "keras")


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and getattr(module.__spec__, "_initializing", False)


class _KerasExtrasFinder(importlib.abc.MetaPathFinder):
    """Refuses ``HIDDEN`` while TensorFlow or Keras is importing; steps aside once it has."""

    def find_spec(self, fullname, path, target=None):
        if any(_initializing(name) for name in _WATCHED):
            if fullname.partition(".")[0] in HIDDEN:
                raise ModuleNotFoundError(
                    f"{fullname} is skipped while TensorFlow loads (runtime.lean_imports)",
                    name=fullname,
                )
        elif any(name in sys.modules for name in _WATCHED):
            _remove(self)  # loaded: nothing left to skip
        return None  # the usual finders decide


def _remove(finder: _KerasExtrasFinder) -> None:
    try:
        sys.meta_path.remove(finder)
    except ValueError:  # removed already
        pass


def skip_keras_extras() -> None:
    """Install the finder unless TensorFlow, Keras or the hidden packages are loaded already
    (then there is nothing to save); idempotent."""
    if any(name in sys.modules for name in (*_WATCHED, *HIDDEN)):
        return
    if not any(isinstance(finder, _KerasExtrasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasExtrasFinder())
