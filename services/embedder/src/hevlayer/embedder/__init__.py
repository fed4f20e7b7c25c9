"""hevlayer embedder service."""
