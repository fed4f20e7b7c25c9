"""The object lane's extraction, shared by the hevlayer CLI and the extract worker."""
