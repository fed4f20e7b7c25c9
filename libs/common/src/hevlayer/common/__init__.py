"""Shared runtime of the hevlayer services."""
