"""Apache Beam only: typed options -> a frozen config, I/O-free composites (hash, dedupe,
decode, encode, captions, joint), the encoder ``ModelHandler``, the corpus reader and table
writers, the sharded index build on Beam workers, one incremental planner, and one entry point
per job (``index_job``)."""
