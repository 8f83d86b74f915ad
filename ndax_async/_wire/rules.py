"""The spec's field rules, as plain functions over wire-shaped mappings.

One table per payload says each field's kind and whether it is required, in
the order the spec's tables give (which is also the wire order). :func:`check`
applies the kind checks and then every cross-field rule whose fields the table
has, and returns *every* problem it finds, never stopping at the first.

The models run these rules on construction; the sandbox runs the same rules
on what it receives, so client and fake server agree on what is valid.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..errors import Problem

__all__ = [
    "ADDRESS_FIELDS",
    "CUSTODIAN_RELATIONSHIPS",
    "CUSTOMER_FIELDS",
    "EMAIL_FIELDS",
    "IDENTITY_FIELDS",
    "MINOR_FIELDS",
    "NAME_FIELDS",
    "SEGMENTS",
    "UPDATE_FIELDS",
    "check",
    "check_participant_code",
    "check_update",
]

STRING = "string"
MILLIS = "unix-ms"
BOOLEAN = "boolean"
OBJECT = "object"

CUSTODIAN_RELATIONSHIPS = ("parent", "legal_guardian")
OTHER_ID_TYPES = ("non_us_other", "non_in_other")

# Timestamps are milliseconds; anything before 1973-03-03 is almost surely seconds.
_MIN_MILLIS = 10**11
_MAX_MILLIS = 10**13
_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
_PO_BOX = re.compile(r"\b(p\.?\s*o\.?\s*box|post\s+office\s+box)\b", re.I)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ZIP_RULES = {
    "united states": (re.compile(r"^\d{5}(-\d{4})?$"), "NNNNN or NNNNN-NNNN"),
    "india": (re.compile(r"^\d{6}$"), "a six-digit PIN (NNNNNN)"),
}
_UNSAFE_IN_PATH = re.compile(r"[/?#%\s]")


@attrs.frozen
class FieldRule:
    """One field of a payload: its wire name, kind and whether it is required."""

    name: str
    kind: str = STRING
    required: bool = True


def _rules(*rules: FieldRule) -> tuple[FieldRule, ...]:
    return rules


NAME_FIELDS = _rules(FieldRule("first_name"), FieldRule("last_name"))
EMAIL_FIELDS = _rules(FieldRule("email"))
ADDRESS_FIELDS = _rules(
    FieldRule("address_one"),
    FieldRule("address_two", required=False),
    FieldRule("city"),
    FieldRule("state", required=False),
    FieldRule("zip", required=False),
    FieldRule("country"),
)
IDENTITY_FIELDS = _rules(
    FieldRule("id_number_type"),
    FieldRule("id_number"),
    FieldRule("non_us_other_type", required=False),
)
_PERSON_FIELDS = (
    *NAME_FIELDS,
    *EMAIL_FIELDS,
    *ADDRESS_FIELDS,
    FieldRule("date_of_birth"),
    *IDENTITY_FIELDS,
    FieldRule("id_issuing_authority", required=False),
)
CUSTOMER_FIELDS = _rules(
    *_PERSON_FIELDS,
    FieldRule("risk_rating", required=False),
    FieldRule("signed_timestamp", MILLIS),
    FieldRule("prefunded", BOOLEAN, required=False),
    FieldRule("metadata", OBJECT, required=False),
)
MINOR_FIELDS = _rules(
    *_PERSON_FIELDS,
    FieldRule("utma_signed_timestamp", MILLIS),
    FieldRule("custodian_participant_code"),
    FieldRule("custodian_relationship", required=False),
    FieldRule("metadata", OBJECT, required=False),
)
SEGMENTS: dict[str, tuple[FieldRule, ...]] = {
    "name": NAME_FIELDS,
    "address": ADDRESS_FIELDS,
    "email": EMAIL_FIELDS,
    "identity": IDENTITY_FIELDS,
}
UPDATE_FIELDS = frozenset(
    ["platform_updated_at"] + [rule.name for rules in SEGMENTS.values() for rule in rules]
)


def check(values: Mapping[str, Any], rules: Iterable[FieldRule]) -> list[Problem]:
    """Every problem of ``values`` against ``rules``; ``None`` counts as absent."""
    problems: list[Problem] = []
    ok: dict[str, Any] = {}
    names: set[str] = set()  # fields of this payload that passed their kind check
    for rule in rules:
        value = values.get(rule.name)
        if type(value) is str and rule.kind == STRING and (value.strip() or not rule.required):
            message = None  # the common case, decided without a call
        else:
            message = _check_kind(rule, value)
        if message:
            problems.append(Problem(rule.name, message))
            continue
        names.add(rule.name)
        if value is not None:
            ok[rule.name] = value
    for rule_fn in _CROSS_FIELD_RULES:
        problems.extend(rule_fn(ok, names))
    return problems


def check_update(values: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a flat (wire-shaped) customer update."""
    problems = [
        Problem(name, "cannot be updated (not part of an updatable data segment)")
        for name in values
        if name not in UPDATE_FIELDS
    ]
    problems.extend(check(values, [FieldRule("platform_updated_at", MILLIS)]))
    segments = [rules for rules in SEGMENTS.values() if any(values.get(r.name) is not None for r in rules)]
    if not segments:
        problems.append(Problem("segments", "platform_updated_at submitted with no data segment to update"))
    for rules in segments:
        problems.extend(check(values, rules))
    return problems


def check_participant_code(code: object, field: str = "participant_code") -> list[Problem]:
    """A participant code must be a non-empty string that is safe in a URL path."""
    if not isinstance(code, str) or not code.strip():
        return [Problem(field, "required (a non-empty participant code)")]
    if _UNSAFE_IN_PATH.search(code):
        return [Problem(field, "must be URL-safe: no '/', '?', '#', '%' or whitespace")]
    return []


def _check_kind(rule: FieldRule, value: Any) -> str | None:
    if value is None:
        return "required" if rule.required else None
    if rule.kind == STRING:
        if not isinstance(value, str):
            return f"must be a string, not {type(value).__name__}"
        if rule.required and not value.strip():
            return "required (must not be blank)"
        return None
    if rule.kind == MILLIS:
        return _check_millis(value)
    if rule.kind == BOOLEAN:
        return None if isinstance(value, bool) else f"must be a boolean, not {type(value).__name__}"
    if not isinstance(value, Mapping):
        return f"must be an object, not {type(value).__name__}"
    return _check_json_object(value)


def _check_millis(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return "must be timezone-aware" if value.tzinfo is None else None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be unix milliseconds (an integer or a datetime), not {type(value).__name__}"
    if value < _MIN_MILLIS:
        return "must be unix milliseconds (this looks like seconds, or a date before 1973)"
    if value >= _MAX_MILLIS:
        return "must be unix milliseconds (this is after the year 2286: microseconds?)"
    return None


def _check_json_object(value: Mapping[Any, Any], depth: int = 0) -> str | None:
    if depth > 32:
        return "is nested too deeply"
    for key, item in value.items():
        if not isinstance(key, str):
            return f"keys must be strings, found {type(key).__name__}"
        message = _check_json_value(item, depth + 1)
        if message:
            return f"{key!r} {message}"
    return None


def _check_json_value(value: Any, depth: int) -> str | None:
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number"
    if isinstance(value, Mapping):
        return _check_json_object(value, depth)
    if isinstance(value, (list, tuple)):
        for item in value:
            message = _check_json_value(item, depth + 1)
            if message:
                return message
        return None
    return f"is not JSON ({type(value).__name__})"


# Cross-field rules: each sees only values that passed their kind check, and
# the names the payload's table has (so a rule for an absent segment is silent).
def _email_rule(ok: dict[str, Any], names: set[str]) -> list[Problem]:
    email = ok.get("email")
    if email is None or (len(email) <= 254 and _EMAIL.match(email)):
        return []
    return [Problem("email", "not a well-formed email address")]


def _po_box_rule(ok: dict[str, Any], names: set[str]) -> list[Problem]:
    return [
        Problem(name, "PO Box addresses are not accepted")
        for name in ("address_one", "address_two")
        if name in ok and _PO_BOX.search(ok[name])
    ]


def _region_rule(ok: dict[str, Any], names: set[str]) -> list[Problem]:
    country = ok.get("country")
    if country is None:
        return []
    key = country.strip().lower()
    if key not in _ZIP_RULES:
        return []
    display = "United States" if key == "united states" else "India"
    problems = []
    if "state" in names and not str(ok.get("state") or "").strip():
        problems.append(Problem("state", f"required when country is {display}"))
    if "zip" in names:
        zip_code = ok.get("zip")
        pattern, form = _ZIP_RULES[key]
        if zip_code is None or not zip_code.strip():
            problems.append(Problem("zip", f"required when country is {display}"))
        elif not pattern.match(zip_code):
            problems.append(Problem("zip", f"must be {form} when country is {display}"))
    return problems


def _date_of_birth_rule(ok: dict[str, Any], names: set[str]) -> list[Problem]:
    text = ok.get("date_of_birth")
    if text is None:
        return []
    if not _DATE.match(text):
        return [Problem("date_of_birth", "must be YYYY-MM-DD")]
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return [Problem("date_of_birth", "not a real calendar date")]
    return []


def _other_id_rule(ok: dict[str, Any], names: set[str]) -> list[Problem]:
    id_type = ok.get("id_number_type")
    if id_type not in OTHER_ID_TYPES or "non_us_other_type" not in names:
        return []
    if str(ok.get("non_us_other_type") or "").strip():
        return []
    return [Problem("non_us_other_type", f"required when id_number_type is {id_type}")]


def _relationship_rule(ok: dict[str, Any], names: set[str]) -> list[Problem]:
    relationship = ok.get("custodian_relationship")
    if relationship is None or relationship in CUSTODIAN_RELATIONSHIPS:
        return []
    return [Problem("custodian_relationship", "must be one of: " + ", ".join(CUSTODIAN_RELATIONSHIPS))]


def _custodian_rule(ok: dict[str, Any], names: set[str]) -> list[Problem]:
    code = ok.get("custodian_participant_code")
    if code is None:
        return []
    return check_participant_code(code, "custodian_participant_code")


_CROSS_FIELD_RULES = (
    _email_rule,
    _po_box_rule,
    _region_rule,
    _date_of_birth_rule,
    _other_id_rule,
    _relationship_rule,
    _custodian_rule,
)
