"""Limits shared by servers and clients."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest gRPC message a hevlayer server or client sends or accepts."""
