"""hevlayer gateway service."""
