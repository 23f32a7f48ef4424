"""Incremental indexing: what changed since the previous version, and how the new one is made.

One planner answers one question for every run with ``--previous``: per content hash, is the
stored row kept, re-labelled (refreshed), encoded again, or gone? Two appliers then make the
new version from the answer, chosen by one decision (``index.update_policy.decide``):

    plan.py    the plan record, built once at the edge; the pure per-content decision and the
               relabelling of stored rows (no Beam)
    decide.py  facts about the previous version (manifest, table footers, model-version
               columns) -> the way the run goes; builds the plan
    diff.py    the Beam side: a key-only, bucketed shuffle join of hashed images with the
               previous table's key columns, and the re-read of refreshed rows
    apply.py   the in-place applier (the delta -> ``index.update.update_index``); the rewriting
               applier is the ordinary ``build_index`` over ``OUT/table`` in the index job

In place, only the changed rows are written (``OUT/delta``) and the previous table and index
are patched. When the previous version was made otherwise (another encoder, joint model, tag
head or captioner version, storage, shard count, quantization, autotuning), the same planner
emits unchanged rows as refreshes too, so that the rewritten table holds every current image,
and the index is built afresh.
"""
