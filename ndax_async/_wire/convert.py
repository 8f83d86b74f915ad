"""The one cattrs converter that owns the wire format.

- ``converter.unstructure(payload)`` gives the wire dict: fields in the spec's
  order, absent optionals omitted (never ``null``), enums as their values,
  datetimes as unix milliseconds (the models' converters already did that).
- ``converter.structure(mapping, NewCustomer)`` (and ``NewMinor``,
  ``CustomerUpdate``) builds a payload from a plain mapping with the same
  validation as the constructor, naming unknown fields as problems too.
  ``CustomerUpdate`` takes the flat wire shape (``{"platform_updated_at": ...,
  "first_name": ..., "address_one": ...}``) or segments as nested mappings.
- ``converter.structure(mapping, Customer)`` (and ``Minor``, ``Participant``)
  reads a response record leniently: it never fails on an odd value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs

from ..errors import Problem, ValidationError
from ..models import (
    Address,
    Customer,
    CustomerUpdate,
    Identity,
    Minor,
    Name,
    NewCustomer,
    NewMinor,
    Participant,
)
from . import rules as _rules

__all__ = ["converter", "read_record", "structure_payload", "to_wire"]

T = TypeVar("T")
NewT = TypeVar("NewT", NewCustomer, NewMinor)
RecordT = TypeVar("RecordT", Customer, Minor, Participant)
Payload = NewCustomer | NewMinor | CustomerUpdate

converter = cattrs.Converter()


def _omit_absent(cls: type[NewT]) -> Callable[[NewT], dict[str, Any]]:
    # cattrs' own omit_if_default moves omittable fields after the required
    # ones; the wire order must stay the spec's, so this keeps attribute order.
    names = tuple(field.name for field in attrs.fields(cls))

    def unstructure(payload: NewT) -> dict[str, Any]:
        wire = {}
        for name in names:
            value = getattr(payload, name)
            if value is not None:
                wire[name] = value
        return wire

    return unstructure


converter.register_unstructure_hook(NewCustomer, _omit_absent(NewCustomer))
converter.register_unstructure_hook(NewMinor, _omit_absent(NewMinor))
converter.register_unstructure_hook(CustomerUpdate, CustomerUpdate.wire_fields)


def to_wire(payload: Payload) -> dict[str, Any]:
    """The payload's wire dict, in wire order."""
    result: dict[str, Any] = converter.unstructure(payload)
    return result


# -- payloads from mappings ------------------------------------------------------


def structure_payload(data: Any, cls: type[T]) -> T:
    """Build ``cls`` from a mapping, reporting every problem at once."""
    result: T = converter.structure(data, cls)
    return result


def _require_mapping(data: Any, cls: type) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValidationError(cls.__name__, [Problem("$", f"must be a mapping, not {type(data).__name__}")])
    return data


def _build(cls: Callable[..., T], values: Mapping[str, Any], problems: list[Problem]) -> T | None:
    """Construct, moving a ValidationError's problems into ``problems``."""
    try:
        return cls(**values)
    except ValidationError as error:
        problems.extend(error.problems)
        return None


def _key_name(key: Any) -> str:
    """An unknown key as a field name a person can see (an empty or odd key is quoted)."""
    text = str(key)
    return text if text.isprintable() and text.strip() == text and text else repr(key)


def _structure_new(data: Any, cls: type[NewT]) -> NewT:
    mapping = _require_mapping(data, cls)
    names = [field.name for field in attrs.fields(cls)]
    problems = [
        Problem(_key_name(key), f"not a field of {cls.__name__}") for key in mapping if key not in names
    ]
    # Absent fields go in as None so the constructor reports them as required.
    built = _build(cls, {name: mapping.get(name) for name in names}, problems)
    if problems or built is None:
        raise ValidationError(cls.__name__, problems)
    return built


_NESTED: dict[str, type[Name | Address | Identity]] = {"name": Name, "address": Address, "identity": Identity}


def _structure_update(data: Any, cls: type[CustomerUpdate]) -> CustomerUpdate:
    mapping = _require_mapping(data, cls)
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if key in _NESTED and isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    problems = [
        Problem(_key_name(key), "cannot be updated (not part of an updatable data segment)")
        for key in flat
        if key not in _rules.UPDATE_FIELDS
    ]
    segments: dict[str, Any] = {}
    segment_failed = False
    segment_cls: type[Name | Address | Identity]
    for attribute, segment_cls in _NESTED.items():
        rules = segment_cls.RULES
        if any(flat.get(rule.name) is not None for rule in rules):
            segment = _build(segment_cls, {rule.name: flat.get(rule.name) for rule in rules}, problems)
            segments[attribute] = segment
            segment_failed |= segment is None
    if segment_failed:
        problems.extend(_rules.check(flat, [_rules.FieldRule("platform_updated_at", _rules.MILLIS)]))
        problems.extend(_rules.check(flat, _rules.EMAIL_FIELDS) if flat.get("email") is not None else [])
        raise ValidationError(cls.__name__, problems)
    update = _build(
        cls,
        {"platform_updated_at": flat.get("platform_updated_at"), "email": flat.get("email"), **segments},
        problems,
    )
    if problems or update is None:
        raise ValidationError(cls.__name__, problems)
    return update


converter.register_structure_hook(NewCustomer, _structure_new)
converter.register_structure_hook(NewMinor, _structure_new)
converter.register_structure_hook(CustomerUpdate, _structure_update)


# -- records, read leniently -----------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    return None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    return None


def _object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _scalar(value: Any) -> str | float | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, int, float)):
        return value
    return None


# Per field type: the type most values already have (kept as they are) and the
# reader for anything else.
_READERS: dict[str, tuple[type[Any], Callable[[Any], Any]]] = {
    "str | None": (str, _text),
    "int | None": (int, _integer),
    "bool | None": (bool, _boolean),
    "dict[str, Any] | None": (dict, _object),
    "str | float | None": (str, _scalar),
}
_NOT_READ = {"raw", "attempts", "request_id", "existing"}  # set by the SDK, never read
_ALIASES: dict[type[Any], dict[str, str]] = {Minor: {"non_in_other_type": "non_us_other_type"}}
_Table = tuple[tuple[str, type[Any], Callable[[Any], Any]], ...]


def _reader_table(cls: type[Any]) -> _Table:
    return tuple(
        (field.name, *_READERS[str(field.type)]) for field in attrs.fields(cls) if field.name not in _NOT_READ
    )


_TABLES: dict[type[Any], _Table] = {cls: _reader_table(cls) for cls in (Customer, Minor, Participant)}


def read_record(data: Mapping[str, Any], cls: type[RecordT], **extra: Any) -> RecordT:
    """Read a record from a response mapping; never fails on odd values."""
    get = data.get
    fields: dict[str, Any] = {"raw": dict(data), **extra}
    for name, usual, read in _TABLES[cls]:
        value = get(name)
        if value is not None:  # absent fields keep the record's default, None
            # ``type() is``, not isinstance: a bool must not pass as an int.
            fields[name] = value if type(value) is usual else read(value)
    for alias, name in _ALIASES.get(cls, {}).items():
        if fields.get(name) is None and alias in data:
            fields[name] = _text(data[alias])
    return cls(**fields)


for _record_cls in _TABLES:
    converter.register_structure_hook(_record_cls, read_record)
