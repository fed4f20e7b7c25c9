"""Hypothesis strategies for any protobuf message, built by walking its descriptor.

``messages(descriptor, pools)`` draws instances of the message: every scalar type, nested
messages, repeated fields, maps, enums (defined and unknown values) and oneofs (at most one
member set). Values mix the odd (empty and huge strings, NUL, right-to-left marks, combining
marks, 4-byte characters, NaN and infinities, negative/zero/extreme integers) with the "mostly
valid" values of ``pools``: real pipeline ids, document ids, chunk ids, worker ids, stages and
fencing tokens of the live pipeline under test, so that the fuzz reaches past validation.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

ODD_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",  # right-to-left override
    "e\u0301\u0301\u0301",  # combining marks
    "\U0001f600\U00010348",  # 4-byte characters
    "\ufeff",
    "../../etc/passwd",
    "%s%n{}",
    "'; DROP TABLE documents; --",
    "A" * 300,
    "b" * 70_000,  # a huge id
)

INT32_EDGES = (0, 1, -1, 2**31 - 1, -(2**31))
INT64_EDGES = (0, 1, -1, 2**63 - 1, -(2**63), 2**31)
UINT32_EDGES = (0, 1, 2**32 - 1, 2**31)
UINT64_EDGES = (0, 1, 2**64 - 1, 2**63, 2**32)


@dataclass
class Pools:
    """Real values of the system under test, mixed into the generated fields."""

    strings: list[str] = field(default_factory=list)
    """Ids that exist: pipeline, documents, chunks, workers, stages."""
    tokens: list[int] = field(default_factory=list)
    """Fencing tokens that are (or were) current."""
    by_field: dict[str, Callable[[], st.SearchStrategy[Any]]] = field(default_factory=dict)
    """Extra strategies for a field name (``values``: vectors of the right dimension), mixed in."""


def odd_text() -> st.SearchStrategy[str]:
    alphabet = st.characters(codec="utf-8", exclude_categories=["Cs"])
    return st.one_of(
        st.sampled_from(ODD_STRINGS),
        st.text(alphabet=alphabet, max_size=40),
        st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=70),
    )


def _string(pools: Pools) -> st.SearchStrategy[str]:
    if pools.strings:
        real = st.sampled_from(pools.strings)
        return st.one_of(real, real, odd_text())
    return odd_text()


def _integer(kind: int, pools: Pools) -> st.SearchStrategy[int]:
    T = FieldDescriptor
    if kind in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32):
        return st.one_of(st.sampled_from(INT32_EDGES), st.integers(-(2**31), 2**31 - 1))
    if kind in (T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64):
        return st.one_of(st.sampled_from(INT64_EDGES), st.integers(-(2**63), 2**63 - 1))
    if kind in (T.TYPE_UINT32, T.TYPE_FIXED32):
        return st.one_of(st.sampled_from(UINT32_EDGES), st.integers(0, 2000))
    edges = st.sampled_from(UINT64_EDGES)
    if pools.tokens:
        return st.one_of(st.sampled_from(pools.tokens), st.sampled_from(pools.tokens), edges)
    return st.one_of(edges, st.integers(0, 2**64 - 1))


def _enum(enum: EnumDescriptor) -> st.SearchStrategy[int]:
    defined = [value.number for value in enum.values]
    return st.one_of(st.sampled_from(defined), st.sampled_from([-1, 99, 2**31 - 1]))


def json_values(depth: int = 2) -> st.SearchStrategy[Any]:
    """Values a ``google.protobuf.Struct`` can hold, odd ones and oversized ones included."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False),
        odd_text(),
        st.just("x" * 20_000),
    )
    if depth <= 0:
        return scalars
    return st.one_of(
        scalars,
        st.lists(json_values(depth - 1), max_size=3),
        st.dictionaries(odd_text(), json_values(depth - 1), max_size=3),
    )


def _struct(message_class: type[Message]) -> st.SearchStrategy[Message]:
    def build(content: dict[str, Any]) -> Message:
        value = message_class()
        value.update(content)  # type: ignore[attr-defined]
        return value

    big = st.just({f"key{i}": "v" * 100 for i in range(2000)})  # oversized metadata
    return st.one_of(st.dictionaries(odd_text(), json_values(), max_size=4), big).map(build)


def _scalar(fd: FieldDescriptor, pools: Pools, depth: int) -> st.SearchStrategy[Any]:
    T = FieldDescriptor
    if fd.type == T.TYPE_STRING:
        return _string(pools)
    if fd.type == T.TYPE_BYTES:
        return st.binary(max_size=64)
    if fd.type == T.TYPE_BOOL:
        return st.booleans()
    if fd.type == T.TYPE_FLOAT:
        return st.floats(width=32)
    if fd.type == T.TYPE_DOUBLE:
        return st.floats()
    if fd.type == T.TYPE_ENUM:
        assert fd.enum_type is not None
        return _enum(fd.enum_type)
    if fd.type in (T.TYPE_MESSAGE, T.TYPE_GROUP):
        assert fd.message_type is not None
        return messages(fd.message_type, pools, depth + 1)
    return _integer(fd.type, pools)


def _entry(fd: FieldDescriptor) -> Descriptor:
    assert fd.message_type is not None
    return fd.message_type


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and _entry(fd).GetOptions().map_entry


def _field(fd: FieldDescriptor, pools: Pools, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(fd):
        key = _scalar(_entry(fd).fields_by_name["key"], pools, depth)
        value = _scalar(_entry(fd).fields_by_name["value"], pools, depth)
        return st.dictionaries(key, value, max_size=3)
    repeated = fd.is_repeated
    element = _scalar(fd, pools, depth)
    if repeated:
        # A list, sometimes with its first element repeated (duplicated ids, leases, chunks).
        base = st.lists(element, max_size=4 if depth < 2 else 2)
        plain = st.one_of(base, base.map(lambda items: items + items[:1]))
    else:
        plain = element
    extra = pools.by_field.get(fd.name)
    return st.one_of(plain, extra()) if extra is not None else plain


def _assign(message: Message, fd: FieldDescriptor, value: Any) -> None:
    if _is_map(fd):
        target = getattr(message, fd.name)
        value_fd = _entry(fd).fields_by_name["value"]
        for k, v in value.items():
            if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif fd.is_repeated:
        target = getattr(message, fd.name)
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, fd.name).CopyFrom(value)
    else:
        setattr(message, fd.name, value)


MAX_DEPTH = 4


def messages(descriptor: Descriptor, pools: Pools, depth: int = 0) -> st.SearchStrategy[Message]:
    """Instances of the message ``descriptor`` describes (see the module docstring)."""
    message_class = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Struct":
        return _struct(message_class)
    if descriptor.full_name == "google.protobuf.Value":
        return st.builds(lambda: message_class())
    if depth > MAX_DEPTH:
        return st.just(message_class())
    plain = [fd for fd in descriptor.fields if fd.containing_oneof is None]
    fields = {fd.name: st.one_of(st.none(), _field(fd, pools, depth)) for fd in plain}
    oneofs: list[st.SearchStrategy[tuple[FieldDescriptor, Any] | None]] = []
    for oneof in descriptor.oneofs:
        members: Sequence[FieldDescriptor] = oneof.fields
        options = [st.tuples(st.just(fd), _field(fd, pools, depth)) for fd in members]
        oneofs.append(st.one_of(st.none(), *options))

    def build(values: dict[str, Any], chosen: list[tuple[FieldDescriptor, Any] | None]) -> Message:
        message = message_class()
        for name, value in values.items():
            if value is not None:
                _assign(message, descriptor.fields_by_name[name], value)
        for choice in chosen:
            if choice is not None:
                _assign(message, choice[0], choice[1])
        return message

    return st.builds(build, st.fixed_dictionaries(fields), st.tuples(*oneofs).map(list))
