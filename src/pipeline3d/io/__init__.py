"""I/O: atomic writes, safe archive reading, format readers, item store and cache shards."""
