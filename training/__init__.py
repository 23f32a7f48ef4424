"""Training jobs that turn embedding tables and captions into model artifacts.

``captions`` reads captioned datasets (pure Python), ``joint`` trains text/image joint
embeddings (imports TensorFlow lazily), ``artifacts`` writes and reads the models directory.
"""
