"""Opening a channel to a hevlayer service with :class:`~hevlayer.client.options.ClientOptions`."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc import aio

from hevlayer.client.options import ClientOptions
from hevlayer.common import stream_status
from hevlayer.common.interceptors import client_interceptors

stream_status.install()  # grpc/grpc#36066: keep a refused stream's status


def open_channel(
    target: str, options: ClientOptions | None = None, *, metadata: Sequence[tuple[str, str]] = ()
) -> aio.Channel:
    """An aio channel to ``target`` (``host:port``): TLS when ``options.tls`` is set
    (with ``call_credentials`` composed in), plaintext otherwise; the retry policy,
    keepalive and message limits of ``options``; client spans unless ``traced`` is off.
    ``metadata`` goes with every call of the channel, even of bare stubs (unlike
    ``options.metadata``, which the service clients send)."""
    options = options or ClientOptions()
    interceptors = (
        client_interceptors(metadata, traced=options.traced) if options.traced or metadata else None
    )
    args = options.channel_args()
    if options.tls is not None:
        credentials = options.tls.credentials()
        if options.call_credentials is not None:
            credentials = grpc.composite_channel_credentials(credentials, options.call_credentials)
        return aio.secure_channel(target, credentials, options=args, interceptors=interceptors)
    if options.call_credentials is not None:
        raise ValueError("ClientOptions.call_credentials needs TLS (set ClientOptions.tls)")
    return aio.insecure_channel(target, options=args, interceptors=interceptors)
