"""Embeddings of shapes, images and text, and what is built on them (nearest neighbours, difficulty bands)."""
