"""Bytes in and out: local paths, ``gs://`` objects and ``http(s)://`` downloads.

``files`` is the one place the project opens, writes, copies, hashes or deletes stored files;
``fetch`` reads one input's bytes with limits (size caps, timeouts, retries) for the index job.
"""
