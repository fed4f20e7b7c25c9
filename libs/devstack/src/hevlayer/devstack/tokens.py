"""The local stack's secrets, kept in ``DATA_DIR/tokens`` (mode 0700, files 0600).

- ``internal.token``: the shared secret of the gateway→claimer channel
  (``CLAIMER_INTERNAL_TOKEN`` of both);
- ``admin.token``: an admin API token for every pipeline, which the CLI uses when
  neither ``--token`` nor ``HEVLAYER_TOKEN`` is given;
- ``<service>.token``: the API token of a service that calls the gateway (the
  embedder worker: role worker; the summarizer: role stager), handed to it as
  ``HEVLAYER_TOKEN_FILE``;
- ``bootstrap.json``: the hashes (never the secrets) of those tokens, which the claimer
  inserts at startup (``CLAIMER_BOOTSTRAP_TOKENS_FILE``).

Files are created once and reused by every later start. To rotate the admin token:
revoke it (``hevlayer tokens revoke ID``), delete ``admin.token``, start the stack again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hevlayer.common.auth import (
    ADMIN,
    NewToken,
    SeedToken,
    generate_internal_token,
    generate_token,
    token_id_of,
    write_secret_file,
    write_seed_file,
)

TOKENS_DIR = "tokens"
ADMIN_TOKEN = "admin"
INTERNAL_TOKEN_FILE = "internal.token"
BOOTSTRAP_FILE = "bootstrap.json"


def tokens_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Where the stack's secrets live."""
    return Path(data_dir).absolute() / TOKENS_DIR


def token_path(data_dir: str | os.PathLike[str], name: str) -> Path:
    """The file of the API token ``name`` (``admin``, or a service's name)."""
    return tokens_dir(data_dir) / f"{name}.token"


def read_admin_token(data_dir: str | os.PathLike[str]) -> str | None:
    """The admin token ``up`` created in ``data_dir``; None if there is none."""
    try:
        return token_path(data_dir, ADMIN_TOKEN).read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class StackTokens:
    """The secrets of one data directory."""

    directory: Path
    internal: str
    files: Mapping[str, Path]
    """Token file per name (``admin`` and each service given a role)."""

    @property
    def bootstrap_file(self) -> Path:
        """The claimer's CLAIMER_BOOTSTRAP_TOKENS_FILE."""
        return self.directory / BOOTSTRAP_FILE

    def token(self, name: str) -> str:
        """The secret of the token ``name``."""
        return self.files[name].read_text().strip()


def _secret(path: Path, make: Callable[[], str]) -> str:
    if path.exists():
        value = path.read_text().strip()
        if value:
            os.chmod(path, 0o600)
            return value
    value = make()
    write_secret_file(path, value)
    return value


def ensure_tokens(data_dir: str | os.PathLike[str], roles: Mapping[str, str]) -> StackTokens:
    """Create what is missing: the internal secret, the admin token and one token per entry of
    ``roles`` (service name → role), all for every pipeline; rewrite the bootstrap file."""
    directory = tokens_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    internal = _secret(directory / INTERNAL_TOKEN_FILE, generate_internal_token)
    files: dict[str, Path] = {}
    seeds: list[SeedToken] = []
    for name, role in {ADMIN_TOKEN: ADMIN, **roles}.items():
        path = directory / f"{name}.token"
        secret = _secret(path, lambda: generate_token().secret)
        token_id = token_id_of(secret)
        if token_id is None:
            raise ValueError(f"{path}: not a hevlayer token (expected hvl_<id>_<secret>); delete it")
        seeds.append(SeedToken.of(NewToken(token_id, secret), f"hevlayer up: {name}", role))
        files[name] = path
    write_seed_file(directory / BOOTSTRAP_FILE, seeds)
    return StackTokens(directory, internal, files)
