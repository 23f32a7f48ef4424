"""Query side: load a published index version and answer nearest-neighbour searches."""
