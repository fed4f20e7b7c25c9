"""Typed configuration from environment variables.

A service declares its settings as a frozen dataclass whose fields carry
:func:`setting` metadata (the variable name and its documentation), and
loads it with :func:`load_settings`. Every variable is documented by
:func:`describe_settings`, which ``docs/configuration.md`` is checked against.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A variable is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class SettingDoc:
    """Documentation row of one environment variable."""

    env: str
    type_name: str
    default: str
    doc: str
    required: bool


def setting(env: str, doc: str, default: Any = dataclasses.MISSING, *, secret: bool = False) -> Any:
    """Declare a dataclass field read from the environment variable ``env``.

    ``secret``: the value is a credential (a password, a key, a DSN with a password); the
    field is left out of the dataclass's ``repr``, so printing or logging the settings object
    cannot reveal it.
    """
    metadata = {"env": env, "doc": doc, "secret": secret}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata, repr=not secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def _resolved_types(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) + " (optional)"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "|".join(str(m.value) for m in tp)
    if origin is tuple:
        return "comma-separated list"
    return getattr(tp, "__name__", str(tp))


def _parse(env: str, raw: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if raw == "" else _parse(env, raw, args[0])
    if tp is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{env}: expected a boolean (true/false), got {raw!r}")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{env}: expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{env}: expected a number, got {raw!r}") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(raw.strip().lower())
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)
            raise ConfigError(f"{env}: expected one of {allowed}, got {raw!r}") from None
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if tp is str:
        return raw
    raise ConfigError(f"{env}: unsupported setting type {tp!r}")


def load_settings(
    cls: type[T],
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from the environment; raise ConfigError naming the variable.

    ``defaults`` maps variable names to raw values used when the variable is
    unset (a service's own default port, for instance).
    """
    env = {**(defaults or {}), **(os.environ if environ is None else environ)}
    hints = _resolved_types(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.metadata.get("env")
        if name is None:
            continue
        raw = env.get(name)
        if raw is None:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{name}: required environment variable is not set")
            continue
        values[field.name] = _parse(name, raw, hints[field.name])
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate()
    return instance


def describe_settings(cls: type[Any]) -> list[SettingDoc]:
    """Documentation rows for every environment variable of ``cls``."""
    hints = _resolved_types(cls)
    rows = []
    for field in dataclasses.fields(cls):
        name = field.metadata.get("env")
        if name is None:
            continue
        required = field.default is dataclasses.MISSING
        if required:
            default = ""
        elif isinstance(field.default, enum.Enum):
            default = str(field.default.value)
        elif isinstance(field.default, tuple):
            default = ",".join(field.default)
        elif isinstance(field.default, bool):
            default = "true" if field.default else "false"
        elif field.default is None:
            default = ""
        else:
            default = str(field.default)
        rows.append(
            SettingDoc(
                env=name,
                type_name=_type_name(hints[field.name]),
                default=default,
                doc=str(field.metadata.get("doc", "")),
                required=required,
            )
        )
    return rows


def settings_classes(module: types.ModuleType) -> list[type[Any]]:
    """The settings dataclasses defined in ``module`` (those with env fields)."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and dataclasses.is_dataclass(value)
        and value.__module__ == module.__name__
        and any("env" in f.metadata for f in dataclasses.fields(value))
    ]


def split_address(address: str, variable: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 in brackets allowed); ConfigError naming ``variable``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{variable}: expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


def load_or_exit(cls: type[T], defaults: Mapping[str, str] | None = None) -> T:
    """:func:`load_settings` for entry points: print the error and exit 2."""
    import sys

    try:
        return load_settings(cls, defaults=defaults)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
