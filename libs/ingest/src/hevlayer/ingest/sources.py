"""Object sources: where the extract loop reads the bytes behind a document id.

A document id names its source:

- an absolute path (``/data/docs/a.md``): a local file (:class:`LocalSource`; what
  ``hevlayer add`` enqueues);
- ``s3://bucket/key``: an S3 object (:class:`S3Source`, aiobotocore; the endpoint and
  credentials of :class:`hevlayer.ingest.s3.S3Connection`). :meth:`S3Source.list` enumerates a
  prefix (``s3://bucket/prefix/``) into ids;
- ``http://...`` / ``https://...``: a URL fetched with GET (:class:`HttpSource`, aiohttp).

Every read is bounded (``max_bytes``: a larger object fails without being read whole) and every
error names the id: :class:`ObjectMissing` when the object is gone (the loop deletes the
document), :class:`SourceError` when it cannot be read (the loop fails the document with the
message).
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from hevlayer.ingest.files import DEFAULT_MAX_FILE_BYTES, Root, display_name
from hevlayer.ingest.s3 import S3Connection, open_s3_client, split_s3_uri


class SourceError(Exception):
    """The object behind a document id cannot be read; the message names the id and says why
    (``document_id``: the id; ``reason``: the why alone, what a failed document records)."""

    def __init__(self, document_id: str, reason: str) -> None:
        super().__init__(f"{document_id}: {reason}")
        self.document_id = document_id
        self.reason = reason


class ObjectMissing(SourceError):
    """The object behind a document id no longer exists."""


@dataclass(frozen=True)
class ObjectData:
    """One object read from its source."""

    document_id: str
    name: str
    """The name shown to people and given to kind detection (it keeps the extension)."""
    data: bytes


def _last_two(path: str) -> str:
    parts = [p for p in PurePosixPath(path).parts if p != "/"]
    return "/".join(parts[-2:]) if parts else path


def _with_type_extension(name: str, content_type: str) -> str:
    """``name`` with the extension of ``content_type`` when it has none (``page`` + text/html)."""
    if PurePosixPath(name).suffix or not content_type:
        return name
    extension = mimetypes.guess_extension(content_type.split(";", 1)[0].strip())
    return name + extension if extension else name


class ObjectSource(ABC):
    """Reads the objects of the document ids it handles."""

    @abstractmethod
    def handles(self, document_id: str) -> bool:
        """Whether ``document_id`` names an object of this source."""

    @abstractmethod
    async def read(self, document_id: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ObjectData:
        """The object's bytes; ObjectMissing or SourceError (naming the id) otherwise."""


class LocalSource(ObjectSource):
    """Files named by absolute paths. ``roots`` (the paths given to ``hevlayer add``) make the
    display names relative to them; without roots a name is the path's last two parts."""

    def __init__(self, roots: Sequence[Root] = ()) -> None:
        self.roots = list(roots)

    def handles(self, document_id: str) -> bool:
        return document_id.startswith("/")

    async def read(self, document_id: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ObjectData:
        return await asyncio.to_thread(self.read_blocking, document_id, max_bytes)

    def read_blocking(self, document_id: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ObjectData:
        path = Path(document_id)
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > max_bytes:
                    raise SourceError(document_id, f"larger than {max_bytes} bytes ({size})")
                data = file.read(max_bytes + 1)
        except FileNotFoundError:
            raise ObjectMissing(document_id, "no such file") from None
        except IsADirectoryError:
            raise SourceError(document_id, "unreadable: is a directory") from None
        except OSError as exc:
            raise SourceError(document_id, f"unreadable: {exc.strerror or exc}") from None
        if len(data) > max_bytes:
            raise SourceError(document_id, f"larger than {max_bytes} bytes")
        name = display_name(path, self.roots) if self.roots else _last_two(document_id)
        return ObjectData(document_id, name, data)


_S3_MISSING = ("NoSuchKey", "404", "NotFound")


class S3Source(ObjectSource):
    """Objects named ``s3://bucket/key``, read with an aiobotocore client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def handles(self, document_id: str) -> bool:
        return document_id.startswith("s3://")

    async def read(self, document_id: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ObjectData:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            bucket, key = split_s3_uri(document_id)
        except ValueError:
            raise SourceError(document_id, "not an s3:// URI with a bucket") from None
        if not key or key.endswith("/"):
            raise SourceError(document_id, "names a prefix, not an object")
        try:
            response = await self._client.get_object(Bucket=bucket, Key=key)
            size = int(response.get("ContentLength") or 0)
            async with response["Body"] as stream:
                if size > max_bytes:
                    raise SourceError(document_id, f"larger than {max_bytes} bytes ({size})")
                data: bytes = await stream.read(max_bytes + 1)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _S3_MISSING:
                raise ObjectMissing(document_id, "no such S3 object") from None
            raise SourceError(document_id, f"S3 refused the read: {code or exc}") from None
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise SourceError(document_id, f"S3 unreachable: {exc}") from None
        if len(data) > max_bytes:
            raise SourceError(document_id, f"larger than {max_bytes} bytes")
        name = _with_type_extension(_last_two(key), str(response.get("ContentType") or ""))
        return ObjectData(document_id, name, data)

    async def list_objects(self, uri: str) -> AsyncIterator[tuple[str, int, str]]:
        """``(document id, size, ETag)`` of every object under ``s3://bucket/prefix``."""
        bucket, prefix = split_s3_uri(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            response = await self._client.list_objects_v2(**kwargs)
            for item in response.get("Contents", []):
                if not item["Key"].endswith("/"):
                    yield f"s3://{bucket}/{item['Key']}", int(item["Size"]), str(item.get("ETag", ""))
            if not response.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = response.get("NextContinuationToken")


_HTTP_MISSING = (404, 410)


class HttpSource(ObjectSource):
    """Objects named ``http(s)://...`` URLs, fetched with GET (redirects followed)."""

    def __init__(self, session: Any, timeout_seconds: float = 60.0) -> None:
        self._session = session
        self._timeout = timeout_seconds

    def handles(self, document_id: str) -> bool:
        return document_id.startswith(("http://", "https://"))

    async def read(self, document_id: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ObjectData:
        import aiohttp

        try:
            async with self._session.get(
                document_id, timeout=aiohttp.ClientTimeout(total=self._timeout)
            ) as response:
                if response.status in _HTTP_MISSING:
                    raise ObjectMissing(document_id, f"HTTP {response.status}")
                if response.status >= 400:
                    raise SourceError(document_id, f"HTTP {response.status} {response.reason or ''}".rstrip())
                if response.content_length is not None and response.content_length > max_bytes:
                    raise SourceError(
                        document_id, f"larger than {max_bytes} bytes ({response.content_length})"
                    )
                data = bytearray()
                async for piece in response.content.iter_chunked(65536):
                    data += piece
                    if len(data) > max_bytes:
                        raise SourceError(document_id, f"larger than {max_bytes} bytes")
                content_type = response.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(document_id, f"cannot fetch: {type(exc).__name__}: {exc}") from None
        path = unquote(urlsplit(document_id).path).rstrip("/")
        name = _with_type_extension(_last_two(path) or urlsplit(document_id).netloc, content_type)
        return ObjectData(document_id, name, bytes(data))


class Sources(ObjectSource):
    """The sources a loop reads from; a document id goes to the first that handles it."""

    def __init__(self, sources: Sequence[ObjectSource]) -> None:
        self.sources = list(sources)

    def handles(self, document_id: str) -> bool:
        return any(source.handles(document_id) for source in self.sources)

    async def read(self, document_id: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ObjectData:
        for source in self.sources:
            if source.handles(document_id):
                return await source.read(document_id, max_bytes)
        raise SourceError(
            document_id,
            "no source for this id (expected an absolute path, s3://bucket/key or an http(s):// URL)",
        )


async def open_sources(
    stack: AsyncExitStack,
    *,
    roots: Sequence[Root] = (),
    s3: S3Connection | None = None,
    http: bool = True,
    http_timeout_seconds: float = 60.0,
) -> Sources:
    """Local files, plus S3 (when ``s3`` is given) and HTTP(S); clients close with ``stack``."""
    sources: list[ObjectSource] = [LocalSource(roots)]
    if s3 is not None:
        sources.append(S3Source(await open_s3_client(s3, stack)))
    if http:
        import aiohttp

        session = await stack.enter_async_context(aiohttp.ClientSession())
        sources.append(HttpSource(session, http_timeout_seconds))
    return Sources(sources)
