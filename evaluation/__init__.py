"""Offline retrieval evaluation: the eval job (methods, metrics.json, report.html, submission),
the quality gate of the nightly run, and the fusion trainer (an evaluation job that fits fusion
weights on a dev split). Metrics themselves are in ``ranking``."""
