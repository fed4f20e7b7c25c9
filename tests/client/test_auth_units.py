"""Token format, bearer parsing, the bootstrap file, secret files, the token from the environment."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from hevlayer.client import ClientOptions
from hevlayer.client.settings import ClientTLSSettings
from hevlayer.common.auth import (
    SeedToken,
    bearer,
    generate_token,
    read_seed_file,
    token_hash,
    token_id_of,
    write_secret_file,
    write_seed_file,
)
from hevlayer.common.config import ConfigError
from hevlayer.devstack.tokens import ensure_tokens, read_admin_token


def test_a_token_has_a_public_id_and_256_random_bits() -> None:
    first, second = generate_token(), generate_token()
    assert first.secret != second.secret
    assert token_id_of(first.secret) == first.id
    prefix, token_id, secret = first.secret.split("_", 2)
    assert (prefix, token_id) == ("hvl", first.id)
    assert len(secret) == 43  # 32 bytes, unpadded base64
    assert first.hash == token_hash(first.secret)
    assert len(first.hash) == 32
    assert token_id_of("hvl_nothex_x") is None


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_takes_the_token_of_a_bearer_value_only(value: str | None, token: str | None) -> None:
    assert bearer(value) == token


def test_the_seed_file_holds_hashes_and_round_trips(tmp_path: Path) -> None:
    token = generate_token()
    path = tmp_path / "seed.json"
    seeds = [SeedToken.of(token, "admin", "admin"), SeedToken.of(generate_token(), "w", "worker", ["p1"])]
    write_seed_file(path, seeds)
    assert token.secret not in path.read_text()
    assert read_seed_file(path) == seeds


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"id": "a", "sha256": "00" * 32, "role": "root"}, "tokens[0].role"),
        ({"id": "a", "sha256": "00" * 3, "role": "admin"}, "tokens[0].sha256"),
        ({"id": "a", "role": "admin"}, "tokens[0]"),
        ({"id": "a", "sha256": "00" * 32, "role": "admin", "all_pipelines": False}, "tokens[0]"),
    ],
)
def test_a_malformed_seed_entry_is_named(tmp_path: Path, entry: dict[str, object], field: str) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"tokens": [entry]}))
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        read_seed_file(path)


def test_secret_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "a" / "secret"
    write_secret_file(path, "s3cr3t")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "s3cr3t\n"


def test_ensure_tokens_creates_once_and_reuses(tmp_path: Path) -> None:
    first = ensure_tokens(tmp_path, {"embedder-worker": "worker"})
    again = ensure_tokens(tmp_path, {"embedder-worker": "worker"})
    assert first.internal == again.internal
    assert first.token("admin") == again.token("admin") == read_admin_token(tmp_path)
    seeds = {s.name: s for s in read_seed_file(first.bootstrap_file)}
    assert seeds["hevlayer up: embedder-worker"].role == "worker"
    assert seeds["hevlayer up: admin"].hash == token_hash(first.token("admin"))
    assert stat.S_IMODE(first.directory.stat().st_mode) == 0o700


def options_of(env: dict[str, str]) -> ClientOptions:
    return ClientTLSSettings.from_env(env).options()


def test_client_settings_from_the_environment_send_the_token(tmp_path: Path) -> None:
    token = generate_token().secret
    assert options_of({"HEVLAYER_TOKEN": token}).metadata == [("authorization", f"Bearer {token}")]
    path = tmp_path / "token"
    path.write_text(token + "\n")
    from_file = options_of({"HEVLAYER_TOKEN_FILE": str(path)})
    assert from_file.metadata == [("authorization", f"Bearer {token}")]
    assert options_of({}).metadata == ()
    # The gateway's own channels (to the claimer and the embedder) never send an API token.
    settings = ClientTLSSettings.from_env({"HEVLAYER_TOKEN": token})
    assert settings.options(api_token=False).metadata == ()
    assert token not in repr(settings)
    with pytest.raises(ConfigError, match="HEVLAYER_TOKEN_FILE"):
        ClientTLSSettings.from_env({"HEVLAYER_TOKEN_FILE": str(tmp_path / "missing")})
