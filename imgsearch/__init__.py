"""imgsearch: semantic image search as a batch indexing pipeline plus a thin serving layer."""

__version__ = "0.1.0"
