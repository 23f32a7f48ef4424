"""Image (and later text) encoders: pure TensorFlow/Keras, shared by the batch and serving paths."""
