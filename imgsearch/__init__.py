"""imgsearch: semantic image search as a batch indexing pipeline plus a thin serving layer.

``from imgsearch import open_index`` is the Python API (``imgsearch.api``); it is imported on
first use, so ``import imgsearch`` (the CLI, settings, the DAG files) stays free of Beam and
TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["open_index"]

if TYPE_CHECKING:
    from imgsearch.api import open_index


def __getattr__(name: str) -> Any:
    if name == "open_index":
        from imgsearch.api import open_index

        return open_index
    raise AttributeError(f"module 'imgsearch' has no attribute {name!r}")
