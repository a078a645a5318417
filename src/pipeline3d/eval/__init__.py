"""Evaluation metrics (classification; retrieval and completion probes follow)."""
