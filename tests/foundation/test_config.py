"""Typed configuration: parsing, errors naming the variable, documentation coverage."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hevlayer.common.config import (
    ConfigError,
    describe_settings,
    load_settings,
    setting,
    settings_classes,
    split_address,
)
from hevlayer.common.server import ServerSettings

ROOT = Path(__file__).resolve().parents[2]


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


@dataclasses.dataclass(frozen=True)
class Sample:
    url: str = setting("SAMPLE_URL", "required url")
    count: int = setting("SAMPLE_COUNT", "an int", 3)
    ratio: float = setting("SAMPLE_RATIO", "a float", 0.5)
    flag: bool = setting("SAMPLE_FLAG", "a bool", False)
    mode: Mode = setting("SAMPLE_MODE", "an enum", Mode.FAST)
    tags: tuple[str, ...] = setting("SAMPLE_TAGS", "a list", ())
    maybe: int | None = setting("SAMPLE_MAYBE", "optional int", None)


def test_defaults_and_parsing() -> None:
    s = load_settings(Sample, {"SAMPLE_URL": "x"})
    assert (s.count, s.ratio, s.flag, s.mode, s.tags, s.maybe) == (3, 0.5, False, Mode.FAST, (), None)
    s = load_settings(
        Sample,
        {
            "SAMPLE_URL": "x",
            "SAMPLE_COUNT": "7",
            "SAMPLE_RATIO": "1.5",
            "SAMPLE_FLAG": "yes",
            "SAMPLE_MODE": "SAFE",
            "SAMPLE_TAGS": "a, b,,c",
            "SAMPLE_MAYBE": "4",
        },
    )
    assert (s.count, s.ratio, s.flag, s.mode, s.tags, s.maybe) == (
        7,
        1.5,
        True,
        Mode.SAFE,
        ("a", "b", "c"),
        4,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "SAMPLE_URL"),
        ({"SAMPLE_URL": "x", "SAMPLE_COUNT": "many"}, "SAMPLE_COUNT"),
        ({"SAMPLE_URL": "x", "SAMPLE_RATIO": "half"}, "SAMPLE_RATIO"),
        ({"SAMPLE_URL": "x", "SAMPLE_FLAG": "maybe"}, "SAMPLE_FLAG"),
        ({"SAMPLE_URL": "x", "SAMPLE_MODE": "turbo"}, "SAMPLE_MODE"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}:"):
        load_settings(Sample, env)


def test_server_settings_validate() -> None:
    with pytest.raises(ConfigError, match=r"^HEVLAYER_GRPC_ADDRESS:"):
        load_settings(ServerSettings, {"HEVLAYER_GRPC_ADDRESS": "nohostport"})
    with pytest.raises(ConfigError, match=r"^HEVLAYER_LOG_FORMAT:"):
        load_settings(ServerSettings, {"HEVLAYER_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match=r"^HEVLAYER_EVENT_LOOP:"):
        load_settings(ServerSettings, {"HEVLAYER_EVENT_LOOP": "trio"})
    assert load_settings(ServerSettings, {}).event_loop == "uvloop"
    defaults = load_settings(ServerSettings, {}, defaults={"HEVLAYER_GRPC_ADDRESS": "0.0.0.0:1"})
    assert defaults.grpc_address == "0.0.0.0:1"
    explicit = load_settings(
        ServerSettings,
        {"HEVLAYER_GRPC_ADDRESS": "127.0.0.1:2"},
        defaults={"HEVLAYER_GRPC_ADDRESS": "0.0.0.0:1"},
    )
    assert explicit.grpc_address == "127.0.0.1:2"


@given(st.sampled_from(["127.0.0.1", "localhost", "[::1]", "gateway.layer.svc"]), st.integers(0, 65535))
def test_split_address_round_trips(host: str, port: int) -> None:
    assert split_address(f"{host}:{port}", "X") == (host.strip("[]"), port)


@given(st.text(alphabet=st.characters(blacklist_characters=":"), max_size=20))
def test_split_address_rejects_missing_port(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^X:"):
        split_address(text, "X")


def _settings_classes() -> list[type]:
    """Every settings dataclass of every package (modules named settings.py)."""
    classes: list[type] = []
    for path in sorted(ROOT.glob("*/*/src/hevlayer/**/settings.py")):
        parts = path.with_suffix("").parts
        classes.extend(settings_classes(importlib.import_module(".".join(parts[parts.index("src") + 1 :]))))
    return classes


def test_every_variable_is_documented() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", documented))
    classes = [ServerSettings, *_settings_classes()]
    assert len(classes) >= 3
    missing = sorted(row.env for cls in classes for row in describe_settings(cls) if row.env not in names)
    assert not missing, f"docs/configuration.md does not document: {missing}"
