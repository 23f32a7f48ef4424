"""Trainers that read embedding tables and captions and write models to the model store.

``captions`` reads captioned datasets (pure Python), ``features`` gets a dataset's image
features from an index job's table, the joint-embedding and captioner trainers fit models
(TensorFlow imported lazily) and save them through ``models.artifacts``.
"""
