"""The model store: trained models as immutable versions in a models directory.

``artifacts`` saves and loads versions (weights, config, metadata, ``LATEST``); ``joint`` and
``captioner`` pin the version an index job uses; ``fusion_weights`` reads the fitted fusion.
"""
