"""API tokens: their format, their hash, and who a verified token is.

A token is ``hvl_<id>_<secret>``: ``id`` is 16 hexadecimal digits, public
(listed, named in logs and errors, used to revoke it); ``secret`` is 32
random bytes (256 bits) in unpadded URL-safe base64. The server stores only
the SHA-256 of the whole token string: the token is high-entropy, so a
plain hash is as strong as a slow password hash and costs microseconds per
call. A token travels as ``authorization: Bearer <token>`` (gRPC metadata,
HTTP header). The role each call needs is in
:data:`hevlayer.client.methods.ACCESS`; docs/security.md has the table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ADMIN = "admin"
STAGER = "stager"
WORKER = "worker"
READER = "reader"
ROLES: tuple[str, ...] = (ADMIN, STAGER, WORKER, READER)
"""Every role; ``admin`` may make every call."""

AUTHORIZATION = "authorization"
"""Metadata key (and HTTP header) of the bearer token."""
INTERNAL_TOKEN_KEY = "x-hevlayer-internal-token"
"""Metadata key of the shared secret the gateway sends the claimer (CLAIMER_INTERNAL_TOKEN)."""
TOKEN_ENV = "HEVLAYER_TOKEN"
"""Environment variable a client (CLI, embedder worker, summarizer, operator) reads its token from."""

_TOKEN = re.compile(r"^hvl_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class NewToken:
    """A freshly generated token: the secret (shown once) and what is stored."""

    id: str
    secret: str

    @property
    def hash(self) -> bytes:
        """SHA-256 of the secret: the only form the server keeps."""
        return token_hash(self.secret)


def generate_token() -> NewToken:
    """A new random token (256 bits of secret) with a new public id."""
    token_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return NewToken(token_id, f"hvl_{token_id}_{secret}")


def token_hash(secret: str) -> bytes:
    """SHA-256 of a token string (32 bytes)."""
    return hashlib.sha256(secret.encode()).digest()


def token_id_of(secret: str) -> str | None:
    """The public id inside a well-formed token; None if it is not one."""
    match = _TOKEN.match(secret)
    return match.group(1) if match else None


def generate_internal_token() -> str:
    """A new shared secret for the gateway→claimer channel (256 bits)."""
    return secrets.token_urlsafe(32)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer(value: str | None) -> str | None:
    """The token of an ``authorization`` value (``Bearer <token>``); None if absent or malformed."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def bearer_metadata(token: str) -> tuple[str, str]:
    """The metadata entry carrying ``token``."""
    return (AUTHORIZATION, f"Bearer {token}")


@dataclass(frozen=True)
class Principal:
    """Who a verified token is: its id, role and pipelines."""

    token_id: str
    name: str
    role: str
    all_pipelines: bool
    pipelines: frozenset[str]

    def may(self, roles: Iterable[str]) -> bool:
        """True if this token's role is admin or one of ``roles``."""
        return self.role == ADMIN or self.role in roles

    def covers(self, pipeline_id: str) -> bool:
        """True if this token may act on ``pipeline_id``."""
        return self.all_pipelines or pipeline_id in self.pipelines

    def describe(self) -> str:
        """How errors name the token: its public id and role, never its secret."""
        return f"token {self.token_id} (role {self.role})"


# -- Tokens provisioned before the first call ---------------------------------------------------------


@dataclass(frozen=True)
class SeedToken:
    """A token the claimer inserts at startup (CLAIMER_BOOTSTRAP_TOKENS_FILE): how the first
    admin token comes to exist. Only its hash is written; a token already present (even
    revoked) is left as it is, so restarting never revives a revoked token."""

    id: str
    hash: bytes
    name: str
    role: str
    all_pipelines: bool = True
    pipeline_ids: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, token: NewToken, name: str, role: str, pipeline_ids: Iterable[str] | None = None
    ) -> SeedToken:
        """The seed entry of ``token``; ``pipeline_ids`` None: every pipeline."""
        ids = tuple(pipeline_ids or ())
        return cls(token.id, token.hash, name, role, pipeline_ids is None, ids)

    def to_json(self) -> dict[str, object]:
        """The entry as written in the bootstrap file (no secret, only the hash)."""
        return {
            "id": self.id,
            "sha256": self.hash.hex(),
            "name": self.name,
            "role": self.role,
            "all_pipelines": self.all_pipelines,
            "pipeline_ids": list(self.pipeline_ids),
        }

    @classmethod
    def from_json(cls, entry: object, where: str) -> SeedToken:
        """Parse one entry; ValueError naming ``where`` and the field if it is malformed."""
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object")
        try:
            token_id, digest = str(entry["id"]), bytes.fromhex(str(entry["sha256"]))
            role = str(entry["role"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{where}: needs id, sha256 (hex) and role ({exc})") from None
        if len(digest) != 32:
            raise ValueError(f"{where}.sha256: expected 64 hexadecimal digits")
        if role not in ROLES:
            raise ValueError(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}")
        pipelines = tuple(str(p) for p in entry.get("pipeline_ids") or ())
        all_pipelines = bool(entry.get("all_pipelines", not pipelines))
        if not all_pipelines and not pipelines:
            raise ValueError(f"{where}: set all_pipelines or list pipeline_ids")
        return cls(token_id, digest, str(entry.get("name") or token_id), role, all_pipelines, pipelines)


def write_seed_file(path: str | os.PathLike[str], tokens: Iterable[SeedToken]) -> None:
    """Write the bootstrap file the claimer reads (CLAIMER_BOOTSTRAP_TOKENS_FILE)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"tokens": [t.to_json() for t in tokens]}, indent=2) + "\n")


def read_seed_file(path: str | os.PathLike[str]) -> list[SeedToken]:
    """The tokens of a bootstrap file; ValueError naming the file and entry if malformed."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the token file ({exc})") from None
    entries = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f'{path}: expected {{"tokens": [...]}}')
    return [SeedToken.from_json(e, f"{path}: tokens[{i}]") for i, e in enumerate(entries)]


def write_secret_file(path: str | os.PathLike[str], secret: str) -> None:
    """Write ``secret`` to ``path`` readable by its owner only (mode 0600, from creation on)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(target, 0o600)
