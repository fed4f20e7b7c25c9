"""The image kind: OCR by tesseract (the offline default), an OpenAI-compatible vision endpoint
(a local fake that records requests), the Transformation Cache's single flight and the
process-wide description_gate."""

from __future__ import annotations

import base64
import io
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from support.fakes.vision import FakeVision, Recorded, fake_vision_server
from support.sample_files import text_png

from hevlayer.common.config import ConfigError, load_settings
from hevlayer.ingest import vision
from hevlayer.ingest.files import FileEntry, Root, examine
from hevlayer.ingest.producers import Chunk, ProducerError, Source, detect_kind, select_producer
from hevlayer.ingest.transform import TOKEN, TransformationCache
from hevlayer.ingest.vision import (
    CacheOutcome,
    Gate,
    OpenAIVisionProvider,
    VisionSettings,
    configure,
    describe,
    description_gate,
    transformation_cache,
)
from hevlayer.ingest.vision.settings import DEFAULT_PROMPT

WORDS = ["Glacier", "meltwater", "report", "Volcano", "ash", "2026"]


@pytest.fixture(autouse=True)
def fresh_vision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test configures its own describer; the process's one is put back afterwards."""
    for name in ("HEVLAYER_VISION_PROVIDER", "HEVLAYER_VISION_URL", "HEVLAYER_TRANSFORM_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(vision, "_vision", None)


def require_tesseract() -> None:
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed here (`make system-deps` as root installs tesseract-ocr)")


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def produce(data: bytes, name: str = "poster.png") -> list[Chunk]:
    return select_producer("image").produce(Source(f"/pictures/{name}", name, data))


def openai_settings(fake: FakeVision, **overrides: object) -> VisionSettings:
    values: dict[str, object] = {"provider": "openai", "url": fake.url, "model": "llava-test", **overrides}
    return VisionSettings(**values)  # type: ignore[arg-type]


# -- detection ---------------------------------------------------------------------------------------


def test_every_image_format_is_detected_by_extension_and_by_magic_bytes(tmp_path: Path) -> None:
    picture = Image.new("RGB", (4, 3), "navy")
    samples = {
        "a.png": encoded(picture, "PNG"),
        "a.jpg": encoded(picture, "JPEG"),
        "a.webp": encoded(picture, "WEBP"),
        "a.gif": encoded(picture, "GIF"),
        "a.tiff": encoded(picture, "TIFF"),
    }
    for name, data in samples.items():
        assert detect_kind(name, data[:8192]) == "image", name
        assert detect_kind("no-extension", data[:8192]) == "image", name
        path = tmp_path / name
        path.write_bytes(data)
        entry = examine(path, [Root.of(tmp_path)])
        assert isinstance(entry, FileEntry), entry
        assert entry.kind == "image"
        assert entry.content_hash.endswith(";image/2")


# -- the offline default: tesseract OCR + metadata ---------------------------------------------------


def test_ocr_reads_the_words_of_a_rendered_png() -> None:
    require_tesseract()
    configure(VisionSettings())
    data = text_png(["Glacier meltwater report", "Volcano ash 2026"])
    chunks = produce(data)
    assert len(chunks) == 1
    read = {word.lower() for word in re.findall(r"\w+", chunks[0].body)}
    assert {word.lower() for word in WORDS} <= read, chunks[0].body
    width, height = Image.open(io.BytesIO(data)).size
    assert chunks[0].metadata["format"] == "PNG"
    assert (chunks[0].metadata["width"], chunks[0].metadata["height"]) == (width, height)
    assert chunks[0].metadata["described_by"] == "ocr:tesseract:eng"
    assert chunks[0].text.startswith(f"poster.png (PNG image, {width} x {height} pixels)\n")


def test_an_image_without_text_is_one_chunk_of_its_facts() -> None:
    require_tesseract()
    configure(VisionSettings())
    chunks = produce(encoded(Image.new("RGB", (320, 200), "white"), "PNG"), "blank.png")
    assert [c.body for c in chunks] == ["PNG image, 320 x 200 pixels"]


def test_a_missing_tesseract_is_a_clear_producer_error() -> None:
    configure(VisionSettings(tesseract="tesseract-not-installed-here"))
    with pytest.raises(ProducerError, match="'tesseract-not-installed-here' binary") as raised:
        produce(text_png(["hello"]))
    assert "tesseract-ocr" in str(raised.value)


def test_exif_date_and_camera_are_metadata() -> None:
    class Fixed(vision.VisionProvider):
        calls = 0

        @property
        def token(self) -> str:
            return "fixed:1"

        def describe(self, image: vision.Image) -> str:
            Fixed.calls += 1
            return "a red square"

    configure(VisionSettings(), provider=Fixed())
    exif = Image.Exif()
    exif[271] = "Canon"
    exif[272] = "EOS 5D"
    exif[306] = "2024:05:01 10:00:00"
    data = encoded(Image.new("RGB", (64, 48), "red"), "JPEG", exif=exif)
    chunk = produce(data, "square.jpg")[0]
    assert chunk.body == "a red square"
    assert chunk.metadata["format"] == "JPEG"
    assert chunk.metadata["taken"] == "2024:05:01 10:00:00"
    assert chunk.metadata["camera"] == "Canon EOS 5D"
    assert "camera Canon EOS 5D" in chunk.text.splitlines()[0]
    frames = [Image.new("RGB", (10, 10), color) for color in ("red", "green", "blue")]
    animation = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert produce(animation, "spin.gif")[0].metadata["frames"] == 3


def test_a_broken_image_is_a_producer_error() -> None:
    configure(VisionSettings())
    with pytest.raises(ProducerError, match="unreadable image"):
        produce(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))


# -- an OpenAI-compatible vision endpoint ------------------------------------------------------------


def test_the_openai_provider_sends_a_base64_data_url_and_its_answer_is_the_chunk() -> None:
    answer = "A poster titled Glacier meltwater report, with a photo of an ice cave."
    data = text_png(["Glacier meltwater report"])
    with fake_vision_server(FakeVision(answer=lambda request: answer)) as fake:
        configure(openai_settings(fake, api_key="secret-key", max_tokens=123))
        chunks = produce(data)
    assert [c.body for c in chunks] == [answer]
    assert str(chunks[0].metadata["described_by"]).startswith("openai:llava-test:")
    [request] = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer secret-key"
    assert request.body["model"] == "llava-test"
    assert request.body["max_tokens"] == 123
    [message] = request.body["messages"]
    assert message["role"] == "user"
    text_part, image_part = message["content"]
    assert text_part == {"type": "text", "text": DEFAULT_PROMPT}
    assert image_part["type"] == "image_url"
    assert image_part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(data).decode()


def test_formats_an_endpoint_may_not_take_are_sent_as_png() -> None:
    data = encoded(Image.new("RGB", (30, 20), "green"), "TIFF")
    with fake_vision_server() as fake:
        configure(openai_settings(fake))
        produce(data, "scan.tiff")
    url = fake.requests[0].body["messages"][0]["content"][1]["image_url"]["url"]
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    sent = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
    assert (sent.format, sent.size) == ("PNG", (30, 20))


def test_the_openai_provider_retries_overload_and_reports_refusals() -> None:
    data = encoded(Image.new("RGB", (8, 8), "blue"), "PNG")
    with fake_vision_server(FakeVision(statuses=[503])) as fake:
        configure(VisionSettings(), provider=OpenAIVisionProvider(fake.url, "m", backoff_seconds=0))
        assert produce(data)[0].body == "a described image"
        assert len(fake.requests) == 2
    with fake_vision_server(FakeVision(statuses=[400])) as fake:
        configure(VisionSettings(), provider=OpenAIVisionProvider(fake.url, "m", backoff_seconds=0))
        with pytest.raises(ProducerError, match="answered HTTP 400"):
            produce(data)
        assert len(fake.requests) == 1
        assert produce(data)[0].body == "a described image", "a failure is not cached"
        assert len(fake.requests) == 2
    closed = fake.url
    configure(VisionSettings(), provider=OpenAIVisionProvider(closed, "m", max_attempts=2, backoff_seconds=0))
    with pytest.raises(ProducerError, match=r"cannot reach .* \(after 2 attempts\)"):
        produce(data)


# -- the Transformation Cache and description_gate ---------------------------------------------------


def test_concurrent_requests_for_one_image_make_one_provider_call() -> None:
    callers = 6
    data = text_png(["single flight"])
    with fake_vision_server() as fake:
        current = configure(openai_settings(fake, description_concurrency=callers))
        # The one provider call is held until every other caller has joined it.
        fake.hold = lambda f: current.cache.joined >= callers - 1
        with ThreadPoolExecutor(callers) as pool:
            results = list(pool.map(lambda _: describe(data), range(callers)))
        assert fake.held_too_long == 0
        assert len(fake.requests) == 1
        assert {r.text for r in results} == {"a described image"}
        assert Counter(r.outcome for r in results) == {CacheOutcome.MISS: 1, CacheOutcome.JOINED: callers - 1}
        again = [produce(data) for _ in range(3)]
        assert len(fake.requests) == 1, "later requests are cache hits"
        assert {c[0].body for c in again} == {"a described image"}
        assert transformation_cache().hits == 3


def test_the_description_gate_bounds_provider_calls_in_flight() -> None:
    limit, total = 3, 9
    images = [encoded(Image.new("RGB", (8, 8), (n * 20, 0, 0)), "PNG") for n in range(total)]
    with fake_vision_server() as fake:
        current = configure(openai_settings(fake, description_concurrency=limit))
        # Each request waits until as many are in flight as the gate should allow.
        fake.hold = lambda f: f.in_flight >= min(limit, total - f.completed)
        with ThreadPoolExecutor(total) as pool:
            chunks = list(pool.map(produce, images))
    assert all(c[0].body == "a described image" for c in chunks)
    assert len(fake.requests) == total
    assert fake.held_too_long == 0
    assert fake.peak == limit
    assert description_gate() is current.gate
    assert (current.gate.peak, current.gate.in_flight, current.gate.entered) == (limit, 0, total)


def test_the_cache_directory_serves_later_processes(tmp_path: Path) -> None:
    data = encoded(Image.new("RGB", (8, 8), "purple"), "PNG")
    with fake_vision_server() as fake:
        configure(openai_settings(fake, cache=str(tmp_path / "transformations")))
        assert describe(data).outcome is CacheOutcome.MISS
        configure(openai_settings(fake, cache=str(tmp_path / "transformations")))  # a new process
        assert describe(data).outcome is CacheOutcome.HIT
        configure(openai_settings(fake, model="another-model", cache=str(tmp_path / "transformations")))
        assert describe(data).outcome is CacheOutcome.MISS, "another model is another key"
    assert len(fake.requests) == 2
    entries = (tmp_path / "transformations").glob(f"*/*/{TOKEN.replace('/', '%2F')}")
    assert len(list(entries)) == 2


def test_the_cache_is_bounded_and_shares_failures_without_keeping_them() -> None:
    cache = TransformationCache(max_entries=2)
    keys = [f"{n:064x}" for n in range(3)]
    for key in keys:
        cache.get_or_compute_sync(key, lambda: "value")
    assert len(cache) == 2
    assert cache.get_or_compute_sync(keys[0], lambda: "again")[1] is CacheOutcome.MISS

    def fail() -> str:
        raise RuntimeError("provider down")

    with pytest.raises(RuntimeError, match="provider down"):
        cache.get_or_compute_sync(keys[1], fail)
    assert cache.get_or_compute_sync(keys[1], lambda: "later")[0] in {"value", "later"}
    with pytest.raises(ValueError, match="64 lower-case hex"):
        cache.get_or_compute_sync("not-a-key", lambda: "x")
    with pytest.raises(ValueError, match="limit must be >= 1"):
        Gate("description", 0)


def test_settings_name_the_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="HEVLAYER_VISION_URL"):
        load_settings(VisionSettings, environ={"HEVLAYER_VISION_PROVIDER": "openai"})
    with pytest.raises(ConfigError, match="HEVLAYER_VISION_MODEL"):
        load_settings(
            VisionSettings,
            environ={"HEVLAYER_VISION_PROVIDER": "openai", "HEVLAYER_VISION_URL": "http://x/v1"},
        )
    with pytest.raises(ConfigError, match="HEVLAYER_DESCRIPTION_CONCURRENCY"):
        load_settings(VisionSettings, environ={"HEVLAYER_DESCRIPTION_CONCURRENCY": "0"})
    monkeypatch.setenv("HEVLAYER_VISION_PROVIDER", "crystal-ball")
    with pytest.raises(ProducerError, match="HEVLAYER_VISION_PROVIDER: expected one of ocr, openai"):
        produce(encoded(Image.new("RGB", (8, 8), "blue"), "PNG"))


def test_the_environment_chooses_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_vision_server(FakeVision(answer=lambda r: f"seen by {r.body['model']}")) as fake:
        monkeypatch.setenv("HEVLAYER_VISION_PROVIDER", "openai")
        monkeypatch.setenv("HEVLAYER_VISION_URL", fake.url)
        monkeypatch.setenv("HEVLAYER_VISION_MODEL", "env-model")
        monkeypatch.setenv("HEVLAYER_DESCRIPTION_CONCURRENCY", "2")
        assert produce(encoded(Image.new("RGB", (8, 8), "teal"), "PNG"))[0].body == "seen by env-model"
        assert description_gate().limit == 2
        recorded: list[Recorded] = fake.requests
        assert "authorization" not in recorded[0].headers


def test_threads_share_one_describer_built_on_first_use() -> None:
    with ThreadPoolExecutor(8) as pool:
        built = list(pool.map(lambda _: vision.vision(), range(32)))
    assert len({id(v) for v in built}) == 1
    assert description_gate() is built[0].gate
    assert transformation_cache() is built[0].cache
