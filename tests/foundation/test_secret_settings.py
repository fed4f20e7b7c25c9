"""Credentials in settings are marked ``secret=True`` and left out of the settings' ``repr``,
so that printing or logging a settings object cannot reveal one (the end-to-end check that no
secret reaches a log, an error or a metric is tests/observability/test_no_secrets.py)."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

from hevlayer.common.config import settings_classes
from hevlayer.common.server import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
SENTINEL = "sentinel-credential-0f3c9a"
# Variables whose name says they hold a credential (TLS variables hold file paths, not keys).
CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|API_KEY|TOKEN$|DATABASE_URL")
KNOWN = {
    "DATABASE_URL",
    "S3_SECRET_ACCESS_KEY",
    "GATEWAY_TURBOPUFFER_API_KEY",
    "GATEWAY_MILVUS_TOKEN",
    "SUMMARIZER_LLM_API_KEY",
}


def all_settings_classes() -> list[type[Any]]:
    classes: list[type[Any]] = [ServerSettings]
    for path in sorted(ROOT.glob("*/*/src/hevlayer/**/settings.py")):
        parts = path.with_suffix("").parts
        classes.extend(settings_classes(importlib.import_module(".".join(parts[parts.index("src") + 1 :]))))
    return classes


def env_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "env" in f.metadata]


def test_every_credential_is_marked_secret() -> None:
    marked: set[str] = set()
    unmarked: list[str] = []
    for cls in all_settings_classes():
        for f in env_fields(cls):
            env = f.metadata["env"]
            if f.metadata.get("secret"):
                marked.add(env)
            elif CREDENTIAL_NAME.search(env) and not env.startswith(("HEVLAYER_TLS", "HEVLAYER_CLIENT_TLS")):
                unmarked.append(f"{cls.__name__}.{f.name} ({env})")
    assert not unmarked, f"credentials not marked secret=True: {unmarked}"
    assert marked >= KNOWN, f"not marked secret: {sorted(KNOWN - marked)}"


def test_no_settings_repr_shows_a_secret() -> None:
    checked = 0
    for cls in all_settings_classes():
        secret_fields = [f for f in env_fields(cls) if f.metadata.get("secret")]
        if not secret_fields:
            continue
        required = [
            f
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        values = {f.name: SENTINEL for f in [*secret_fields, *required]}
        instance = cls(**values)
        for text in (repr(instance), str(instance)):
            assert SENTINEL not in text, f"{cls.__name__}'s repr shows a secret: {text}"
        checked += 1
    assert checked >= 4
