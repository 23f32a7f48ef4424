"""The index-version format that the batch jobs write and serving reads.

``schema`` (the embedding table's columns) and ``table`` (reading it back), ``shards`` (which
row goes to which shard, ids files, upload and download), ``build`` (table -> ScaNN shards ->
manifest), ``update`` (ScaNN upsert/delete on a published version), ``manifest`` (what a
version is made of, written last), ``publish`` (the pointer to the current version and
retention), ``scann_index`` and ``ann_tuning`` (ScaNN parameters and autotuning).
Nothing here runs a Beam pipeline: the sharded build takes a shard runner from its caller.
"""
