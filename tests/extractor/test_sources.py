"""Object sources (hevlayer.ingest.sources): each reads its ids, bounds the size, and every
error names the id; on real parts (files, SeaweedFS S3, a local aiohttp server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aiohttp import web

from hevlayer.devstack import SeaweedS3
from hevlayer.ingest.files import Root
from hevlayer.ingest.s3 import S3Connection
from hevlayer.ingest.sources import ObjectMissing, SourceError, Sources, open_sources


@pytest.fixture
async def sources(s3: SeaweedS3) -> AsyncIterator[Sources]:
    async with AsyncExitStack() as stack:
        yield await open_sources(
            stack, s3=S3Connection(s3.endpoint_url, s3.access_key, s3.secret_key, s3.region)
        )


@pytest.fixture
async def web_base() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "big":
            return web.Response(body=b"x" * 5000)
        if name == "broken":
            raise web.HTTPInternalServerError()
        if name == "gone":
            raise web.HTTPGone()
        return web.Response(text="<html><body><p>hello</p></body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_local_files(sources: Sources, tmp_path: Path) -> None:
    path = tmp_path / "docs" / "a.md"
    path.parent.mkdir()
    path.write_text("# A\n")
    obj = await sources.read(path.as_posix())
    assert (obj.name, obj.data) == ("docs/a.md", b"# A\n")
    with pytest.raises(SourceError, match=rf"^{path}: larger than 2 bytes \(4\)$"):
        await sources.read(path.as_posix(), max_bytes=2)
    with pytest.raises(ObjectMissing, match=rf"^{tmp_path}/gone.txt: no such file$"):
        await sources.read((tmp_path / "gone.txt").as_posix())
    with pytest.raises(SourceError, match=rf"^{path.parent}: unreadable"):
        await sources.read(path.parent.as_posix())
    assert Root.of(tmp_path).is_dir


async def test_s3_objects(sources: Sources, s3: SeaweedS3, s3_bucket: str) -> None:
    status, _ = s3.request("PUT", f"/{s3_bucket}/dir/notes.txt", b"field notes")
    assert status == 200
    uri = f"s3://{s3_bucket}/dir/notes.txt"
    obj = await sources.read(uri)
    assert (obj.name, obj.data) == ("dir/notes.txt", b"field notes")
    with pytest.raises(SourceError, match=rf"^{uri}: larger than 4 bytes \(11\)$"):
        await sources.read(uri, max_bytes=4)
    with pytest.raises(ObjectMissing, match=rf"^s3://{s3_bucket}/nope.txt: no such S3 object$"):
        await sources.read(f"s3://{s3_bucket}/nope.txt")
    with pytest.raises(SourceError, match=r"^s3://no-such-bucket-zz/a: S3 refused the read: NoSuchBucket$"):
        await sources.read("s3://no-such-bucket-zz/a")
    with pytest.raises(SourceError, match=rf"^s3://{s3_bucket}/dir/: names a prefix"):
        await sources.read(f"s3://{s3_bucket}/dir/")
    s3_source = next(s for s in sources.sources if s.handles(uri))
    listed = [item async for item in s3_source.list_objects(f"s3://{s3_bucket}/dir/")]  # type: ignore[attr-defined]
    assert [(doc_id, size) for doc_id, size, _ in listed] == [(uri, 11)]


async def test_http_urls(sources: Sources, web_base: str) -> None:
    obj = await sources.read(f"{web_base}/page")
    assert obj.name == "page.html", "a name without extension takes the Content-Type's"
    assert b"hello" in obj.data
    with pytest.raises(SourceError, match=rf"^{web_base}/big: larger than 100 bytes \(5000\)$"):
        await sources.read(f"{web_base}/big", max_bytes=100)
    with pytest.raises(ObjectMissing, match=rf"^{web_base}/gone: HTTP 410$"):
        await sources.read(f"{web_base}/gone")
    with pytest.raises(SourceError, match=rf"^{web_base}/broken: HTTP 500"):
        await sources.read(f"{web_base}/broken")
    with pytest.raises(SourceError, match=r"^http://127.0.0.1:9/x: cannot fetch"):
        await sources.read("http://127.0.0.1:9/x")


async def test_an_id_no_source_handles_is_refused_naming_it(sources: Sources) -> None:
    with pytest.raises(SourceError, match=r"^relative/path.txt: no source for this id"):
        await sources.read("relative/path.txt")
