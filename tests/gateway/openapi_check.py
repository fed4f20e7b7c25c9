"""A small validator for the JSON Schema subset docs/openapi.yaml uses
(``type`` incl. lists and null, ``properties``, ``required``, ``items``,
``additionalProperties``, ``enum``, ``oneOf``, ``minimum``/``maximum``,
``$ref`` into ``#/components/schemas``), so answers can be checked against
the published document without another dependency."""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def errors(value: Any, schema: dict[str, Any], document: dict[str, Any], path: str = "$") -> list[str]:
    """Every way ``value`` fails ``schema`` (empty: it conforms)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return errors(value, document["components"]["schemas"][name], document, path)
    found: list[str] = []
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not errors(value, s, document, path)]
        if len(matching) != 1:
            found.append(f"{path}: matches {len(matching)} of oneOf, not exactly 1")
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        if not any(_type_ok(value, n) for n in names):
            return [f"{path}: {value!r} is not of type {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{path}: {value} > {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                found.append(f"{path}: missing required {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                found.extend(errors(item, properties[key], document, f"{path}.{key}"))
            elif extra is False:
                found.append(f"{path}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                found.extend(errors(item, extra, document, f"{path}.{key}"))
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found.extend(errors(item, schema["items"], document, f"{path}[{index}]"))
    return found


def response_schema(document: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    """The JSON schema of one documented answer."""
    operation = document["paths"][path][method.lower()]
    answer = operation["responses"][str(status)]
    content = answer["content"]
    schema: dict[str, Any] = content.get("application/json", content.get("text/plain"))["schema"]
    return schema


def request_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    """The JSON schema of a documented request body."""
    schema: dict[str, Any] = document["paths"][path][method.lower()]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    return schema


def check(document: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """Assert that ``body`` is a documented answer of ``method path`` with ``status``."""
    problems = errors(body, response_schema(document, path, method, status), document)
    assert not problems, f"{method} {path} -> {status} does not match docs/openapi.yaml: {problems}"
