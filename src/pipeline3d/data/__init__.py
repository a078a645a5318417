"""Data stages: demo generator, ingest, cache, fingerprints and splits."""
