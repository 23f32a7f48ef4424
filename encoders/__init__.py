"""Models and their inputs, pure TensorFlow/Keras and NumPy: image encoders, text encoders,
joint models, the captioner and the tag head, plus the image decoding (``imaging``) that the
index job and the query path share. Imports nothing of the project above it."""
