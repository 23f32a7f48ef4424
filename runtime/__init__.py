"""The process's edges, for the entry points only: how it logs and how it ends.

``log_setup`` configures logging once per command (our steps at INFO, other libraries at
WARNING, TensorFlow's C++ logging before TensorFlow loads); ``lean_imports`` skips what Keras
imports for features not used here while TensorFlow loads; ``process_exit`` ends a finished
command without the native libraries' teardown. Library modules never call either.
"""
