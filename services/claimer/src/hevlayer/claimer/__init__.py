"""hevlayer claimer service."""
