"""hevlayer operator service."""
