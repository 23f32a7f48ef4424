"""Apache Beam jobs: read a corpus, decode, dedupe, encode, write tables, build indexes."""
