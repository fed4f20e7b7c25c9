"""hevlayer summarizer service."""
