"""Vision providers: who turns an image into text, and the image facts read with Pillow.

- :class:`OcrProvider`, the offline default: the text the ``tesseract``
  binary reads in the image (Debian package ``tesseract-ocr``). No network,
  no model download. It does **not** understand scenes: a photo of a dog with
  no writing in it gives no text, only the metadata (size, format, EXIF).
- :class:`OpenAIVisionProvider`: an OpenAI-compatible vision chat-completions
  endpoint (vLLM, NVIDIA NIM and Ollama serve this API). The image is sent as
  a base64 ``data:`` URL in one user message next to the prompt; the answer's
  text is the description.

A provider's :attr:`~VisionProvider.token` names it, its model and its prompt,
so the Transformation Cache never serves one provider's answer for another.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from hevlayer.ingest.vision.settings import DEFAULT_PROMPT

_MIME = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "MPO": "image/jpeg",
}
_SENT_AS_IS = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
"""Formats an OpenAI-compatible endpoint takes as they are; others are converted to PNG first."""
_RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

_EXIF_DATETIME = 306
_EXIF_MAKE = 271
_EXIF_MODEL = 272
_EXIF_IFD = 0x8769
_EXIF_DATETIME_ORIGINAL = 36867


class VisionError(Exception):
    """An image cannot be described; the message says why (shown to the user)."""


class VisionUnavailable(VisionError):
    """The provider cannot run at all here (a missing binary, a bad endpoint configuration)."""


@dataclass(frozen=True)
class ImageInfo:
    """What Pillow reads from an image's bytes."""

    format: str
    """Pillow's format name: PNG, JPEG, WEBP, GIF, TIFF."""
    mime: str
    width: int
    height: int
    frames: int = 1
    taken: str = ""
    """EXIF DateTimeOriginal (else DateTime), as written in the file (``2024:05:01 10:00:00``)."""
    camera: str = ""
    """EXIF Make and Model."""

    def summary(self) -> str:
        """``PNG image, 640 x 480 pixels, 3 frames, taken …, camera …``."""
        parts = [f"{self.format} image, {self.width} x {self.height} pixels"]
        if self.frames > 1:
            parts.append(f"{self.frames} frames")
        if self.taken:
            parts.append(f"taken {self.taken}")
        if self.camera:
            parts.append(f"camera {self.camera}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Image:
    """An image to describe: its bytes and what Pillow read from them."""

    data: bytes
    info: ImageInfo

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the bytes."""
        return hashlib.sha256(self.data).hexdigest()


def _exif_text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).replace("\x00", " ").split())


def _exif_facts(image: Any) -> tuple[str, str]:
    """EXIF date taken and camera (``""`` when absent; broken EXIF is ignored, never fatal)."""
    try:
        exif = image.getexif()
        taken = exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL) or exif.get(_EXIF_DATETIME) or ""
        parts = (_exif_text(exif.get(_EXIF_MAKE, "")), _exif_text(exif.get(_EXIF_MODEL, "")))
    except Exception:  # EXIF is optional metadata; a malformed block does not stop the image
        return "", ""
    return _exif_text(taken), " ".join(part for part in parts if part)


def read_image(data: bytes) -> Image:
    """Decode ``data`` with Pillow (fully, so a truncated file fails here); VisionError if it cannot."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()
            name = image.format or "unknown"
            frames = int(getattr(image, "n_frames", 1) or 1)
            taken, camera = _exif_facts(image)
            info = ImageInfo(
                format=name,
                mime=_MIME.get(name, f"image/{name.lower()}"),
                width=image.width,
                height=image.height,
                frames=frames,
                taken=taken,
                camera=camera,
            )
    except UnidentifiedImageError:
        raise VisionError(
            "unreadable image: not a PNG, JPEG, WebP, GIF or TIFF file Pillow can read"
        ) from None
    except PILImage.DecompressionBombError as exc:
        raise VisionError(f"unreadable image: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise VisionError(f"unreadable image: {exc or type(exc).__name__}") from None
    return Image(data, info)


def as_png(image: Image) -> bytes:
    """The image's first frame as PNG bytes (RGB or grayscale)."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(image.data)) as opened:
        frame = opened.convert("L" if opened.mode in ("1", "L", "I;16", "I", "F") else "RGB")
    out = io.BytesIO()
    frame.save(out, format="PNG")
    return out.getvalue()


class VisionProvider(ABC):
    """Turns an image into text. Implementations must be safe to call from several threads."""

    @property
    @abstractmethod
    def token(self) -> str:
        """Names the provider, its model and its prompt; part of the Transformation Cache key."""

    @abstractmethod
    def describe(self, image: Image) -> str:
        """The image's description. Raises VisionError (VisionUnavailable when it cannot run here)."""


class OcrProvider(VisionProvider):
    """The offline default: ``tesseract`` OCR of the first frame (text it can read, nothing else)."""

    def __init__(
        self, binary: str = "tesseract", languages: str = "eng", timeout_seconds: float = 60.0
    ) -> None:
        self.binary = binary
        self.languages = languages
        self.timeout_seconds = timeout_seconds

    @property
    def token(self) -> str:
        return f"ocr:tesseract:{self.languages}"

    def executable(self) -> str:
        """The tesseract binary's path; VisionUnavailable naming it when it is missing."""
        found = shutil.which(self.binary)
        if found is None:
            raise VisionUnavailable(
                f"the offline image describer needs the {self.binary!r} binary (tesseract OCR), which is "
                "not installed or not on PATH: install Debian's tesseract-ocr package (`make system-deps` "
                "as root does), set HEVLAYER_TESSERACT to its path, or use HEVLAYER_VISION_PROVIDER=openai"
            )
        return found

    def describe(self, image: Image) -> str:
        binary = self.executable()
        try:
            ran = subprocess.run(
                [binary, "stdin", "stdout", "-l", self.languages],
                input=as_png(image),
                capture_output=True,
                timeout=self.timeout_seconds,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise VisionError(f"tesseract took longer than {self.timeout_seconds:g} s") from None
        except OSError as exc:
            raise VisionUnavailable(f"cannot run {binary}: {exc.strerror or exc}") from None
        if ran.returncode != 0:
            detail = " ".join(ran.stderr.decode(errors="replace").split())[:300]
            raise VisionError(f"tesseract failed (exit status {ran.returncode}): {detail}")
        return clean_ocr_text(ran.stdout.decode("utf-8", errors="replace"))


def clean_ocr_text(text: str) -> str:
    """OCR output with trailing spaces, form feeds and runs of blank lines removed."""
    lines = [line.rstrip() for line in text.replace("\f", "\n").splitlines()]
    kept: list[str] = []
    for line in lines:
        if line or (kept and kept[-1]):
            kept.append(line)
    return "\n".join(kept).strip()


class OpenAIVisionProvider(VisionProvider):
    """An OpenAI-compatible ``/chat/completions`` endpoint with a vision model."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str = "",
        prompt: str = DEFAULT_PROMPT,
        max_tokens: int = 400,
        timeout_seconds: float = 60.0,
        max_attempts: int = 3,
        backoff_seconds: float = 0.5,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise VisionUnavailable(f"vision endpoint URL must start with http:// or https://, got {url!r}")
        if not model:
            raise VisionUnavailable("the vision endpoint needs a model name (HEVLAYER_VISION_MODEL)")
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.timeout_seconds = timeout_seconds
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds

    @property
    def token(self) -> str:
        prompt = hashlib.sha256(self.prompt.encode()).hexdigest()[:16]
        return f"openai:{self.model}:{prompt}:{self.max_tokens}"

    def request_body(self, image: Image) -> dict[str, Any]:
        """The chat-completions request: the prompt and the image as a base64 data URL."""
        mime = image.info.mime
        data = image.data
        if mime not in _SENT_AS_IS:
            mime, data = "image/png", as_png(image)
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        content = [{"type": "text", "text": self.prompt}, {"type": "image_url", "image_url": {"url": url}}]
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }

    def describe(self, image: Image) -> str:
        body = json.dumps(self.request_body(image)).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        failure = ""
        for attempt in range(1, self.max_attempts + 1):
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    return self._answer(response.read())
            except urllib.error.HTTPError as exc:
                detail = " ".join(exc.read().decode(errors="replace").split())[:300]
                failure = f"{self.endpoint} answered HTTP {exc.code}: {detail}"
                if exc.code not in _RETRIED_STATUSES:
                    raise VisionError(failure) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                failure = f"cannot reach {self.endpoint}: {reason}"
            if attempt < self.max_attempts:
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
        raise VisionError(f"{failure} (after {self.max_attempts} attempts)")

    def _answer(self, raw: bytes) -> str:
        try:
            answer = json.loads(raw)
            content = answer["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise VisionError(f"{self.endpoint}: unexpected answer ({type(exc).__name__}: {exc})") from None
        if isinstance(content, list):  # content parts
            content = "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise VisionError(f"{self.endpoint}: the answer's message content is not text")
        return content.strip()
