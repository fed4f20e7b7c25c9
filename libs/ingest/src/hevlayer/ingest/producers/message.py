"""Message streams: mbox files and single ``.eml`` messages (standard library :mod:`email`).

An mbox is split on its ``From `` separator lines (as :mod:`mailbox` reads
it; ``>From `` lines are unescaped). Each message is one chunk group: its
text is a short header block (From, To, Date, Subject) and the body — the
``text/plain`` part, else the ``text/html`` part with the markup stripped —
packed up to the budget. Every chunk of a message carries ``message`` (its
1-based position in the file), ``sender``, ``date`` (ISO 8601 when it
parses), ``subject``, and ``message_id`` and ``attachments`` (file names)
when present.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

from hevlayer.ingest.producers.base import (
    DEFAULT_BUDGET,
    Budget,
    Chunk,
    Metadata,
    Producer,
    Source,
    Span,
    build_chunks,
    decode_text,
    display_name,
    one_line,
    split_text,
)
from hevlayer.ingest.producers.html import extract as html_text

_FROM_LINE = re.compile(rb"From \S+ +\w{3} \w{3} +\d{1,2} \d{1,2}:\d\d(:\d\d)? .*\d{4}")
_ESCAPED_FROM = re.compile(rb"^>(>*From )", re.M)
_HEADER_LINE = re.compile(r"([A-Za-z][A-Za-z0-9-]*):")


def split_mbox(data: bytes) -> list[bytes]:
    """The raw messages of an mbox (the bytes after each ``From `` line); all of ``data`` if none."""
    lines = data.splitlines(keepends=True)
    if not lines or not lines[0].startswith(b"From "):
        return [data] if data.strip() else []
    messages: list[list[bytes]] = []
    for line in lines:
        if line.startswith(b"From "):
            messages.append([])
        else:
            messages[-1].append(line)
    raw: list[bytes] = []
    for message in messages:
        if message and not message[-1].strip():
            message = message[:-1]  # the blank line before the next separator
        raw.append(_ESCAPED_FROM.sub(rb"\1", b"".join(message)))
    return raw


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a malformed header is reported as absent, never fatal
        return ""
    return " ".join(str(value).split()) if value is not None else ""


def _date(raw: str) -> str:
    if not raw:
        return ""
    try:
        return parsedate_to_datetime(raw).isoformat()
    except (TypeError, ValueError, IndexError):
        return raw


def _content(part: Message) -> str:
    try:
        if isinstance(part, EmailMessage):
            content = part.get_content()
            if isinstance(content, str):
                return content
    except (LookupError, ValueError, AssertionError, UnicodeError):
        pass
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return decode_text(payload)
    return ""


def body_text(message: Message) -> str:
    """The message's text: the text/plain body, else its text/html body without markup."""
    part: Message | None
    if isinstance(message, EmailMessage):
        part = message.get_body(preferencelist=("plain", "html"))
    else:
        part = message if message.get_content_maintype() == "text" else None
    if part is None:
        return ""
    text = _content(part)
    if part.get_content_subtype() == "html":
        return html_text(text).text
    return text.replace("\r\n", "\n")


def attachment_names(message: Message) -> list[str]:
    """The file names of the message's attachments."""
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        return []
    names: list[str] = []
    for part in message.iter_attachments():
        name = part.get_filename()
        if name:
            names.append(one_line(name, 120))
    return names


class MessageProducer(Producer):
    """mbox files and ``.eml`` messages."""

    kind = "message_stream"
    version = 2  # 2: budgets in the embedding model's tokens
    extensions = (".mbox", ".mbx", ".eml")

    def sniff(self, head: bytes) -> bool:
        if _FROM_LINE.match(head):
            return True
        text = head.decode("latin-1")
        block = text.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")
        if not block or not _HEADER_LINE.match(block[0]):
            return False
        names = {m.group(1).lower() for line in block if (m := _HEADER_LINE.match(line))}
        return {"from", "date"} <= names and bool({"subject", "message-id"} & names)

    def produce(self, source: Source, budget: Budget = DEFAULT_BUDGET) -> list[Chunk]:
        chunks: list[Chunk] = []
        name = display_name(source.name)
        for number, raw in enumerate(split_mbox(source.data), start=1):
            message = email.message_from_bytes(raw, policy=email.policy.default)
            sender = _header(message, "From")
            subject = _header(message, "Subject")
            date = _date(_header(message, "Date"))
            headers = [
                f"{label}: {value}"
                for label, value in (
                    ("From", sender),
                    ("To", _header(message, "To")),
                    ("Date", date),
                    ("Subject", subject),
                )
                if value
            ]
            body = body_text(message).strip()
            text = "\n".join(headers) + ("\n\n" + body if body else "")
            if not text.strip():
                continue
            metadata: Metadata = {"message": number, "sender": sender, "date": date, "subject": subject}
            message_id = _header(message, "Message-ID")
            if message_id:
                metadata["message_id"] = message_id
            attachments = attachment_names(message)
            if attachments:
                metadata["attachments"] = ", ".join(attachments)
            context = f"{name}: {one_line(subject, 160)}" if subject else name
            within = budget.for_head(context)
            spans = [Span(s, e, extra=(("message", number),)) for s, e in split_text(text, within)]
            chunks.extend(
                build_chunks(
                    text,
                    spans,
                    kind=self.kind,
                    name=source.name,
                    context=context,
                    first_ordinal=len(chunks),
                    locator=f"message{number}",
                    metadata=metadata,
                    budget=budget,
                )
            )
        return chunks
