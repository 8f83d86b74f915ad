"""Value objects: what you send (payloads) and what you get back (records).

Payloads (:class:`NewCustomer`, :class:`NewMinor`, :class:`CustomerUpdate` and
its segments :class:`Name`, :class:`Address`, :class:`Identity`) are frozen
and validate themselves on construction: an invalid one cannot exist, and the
:class:`~ndax_async.errors.ValidationError` lists every problem by field.
Their attribute order is the wire order of the spec's tables.

Records (:class:`Customer`, :class:`Minor`, :class:`Participant`) are read
leniently: odd values never fail, unknown fields are kept, and ``raw`` holds
the response's JSON exactly as received.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from ._wire import rules as _rules
from .errors import Problem, ValidationError

__all__ = [
    "Address",
    "CustodianRelationship",
    "Customer",
    "CustomerUpdate",
    "IdType",
    "Identity",
    "Minor",
    "Name",
    "NewCustomer",
    "NewMinor",
    "Participant",
]

UNITED_STATES = "United States"
INDIA = "India"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class IdType(str, enum.Enum):
    """The ID types the vendor documents. Any other string is passed through."""

    AADHAR_CARD = "aadhar_card"
    IN_DRIVING_LICENSE = "in_driving_license"
    IN_PASSPORT = "in_passport"
    IN_PASSPORT_CARD = "in_passport_card"
    NON_IN_PASSPORT = "non_in_passport"
    NON_IN_OTHER = "non_in_other"
    SSN = "ssn"
    NON_US_OTHER = "non_us_other"


class CustodianRelationship(str, enum.Enum):
    """How a custodian relates to a minor."""

    PARENT = "parent"
    LEGAL_GUARDIAN = "legal_guardian"


# -- converters: accept friendly Python values, store wire values ------------


def _plain(value: Any) -> Any:
    """An enum member becomes its value; anything else is kept for validation."""
    return value.value if isinstance(value, enum.Enum) else value


def _millis(value: Any) -> Any:
    """An aware datetime or a string of digits becomes unix milliseconds."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return (value - _EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


def _iso_date(value: Any) -> Any:
    """A ``datetime.date`` becomes ``YYYY-MM-DD``."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _validate(instance: Any, rules: tuple[_rules.FieldRule, ...]) -> None:
    values = {rule.name: getattr(instance, rule.name) for rule in rules}
    problems = _rules.check(values, rules)
    if problems:
        raise ValidationError(type(instance).__name__, problems)


# -- payloads ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NewCustomer:
    """A customer to create (``POST /participants/customers/new``).

    Timestamps take unix milliseconds or an aware ``datetime``;
    ``date_of_birth`` takes ``YYYY-MM-DD`` or a ``datetime.date``.
    """

    RULES: ClassVar[tuple[_rules.FieldRule, ...]] = _rules.CUSTOMER_FIELDS

    first_name: str
    last_name: str
    email: str
    address_one: str
    address_two: str | None = None
    city: str
    state: str | None = None
    zip: str | None = None
    country: str
    date_of_birth: str = attrs.field(converter=_iso_date)
    id_number_type: str = attrs.field(converter=_plain)
    id_number: str
    non_us_other_type: str | None = None
    id_issuing_authority: str | None = None
    risk_rating: str | None = None
    signed_timestamp: int = attrs.field(converter=_millis)
    prefunded: bool | None = None
    metadata: Mapping[str, Any] | None = None

    def __attrs_post_init__(self) -> None:
        _validate(self, self.RULES)


@attrs.frozen(kw_only=True)
class NewMinor:
    """A minor to create under a custodian (``POST /participants/customers/minor``)."""

    RULES: ClassVar[tuple[_rules.FieldRule, ...]] = _rules.MINOR_FIELDS

    first_name: str
    last_name: str
    email: str
    address_one: str
    address_two: str | None = None
    city: str
    state: str | None = None
    zip: str | None = None
    country: str
    date_of_birth: str = attrs.field(converter=_iso_date)
    id_number_type: str = attrs.field(converter=_plain)
    id_number: str
    non_us_other_type: str | None = None
    id_issuing_authority: str | None = None
    utma_signed_timestamp: int = attrs.field(converter=_millis)
    custodian_participant_code: str
    custodian_relationship: str | None = attrs.field(default=None, converter=_plain)
    metadata: Mapping[str, Any] | None = None

    def __attrs_post_init__(self) -> None:
        _validate(self, self.RULES)


@attrs.frozen(kw_only=True)
class Name:
    """The name segment of an update: both names, always together."""

    RULES: ClassVar[tuple[_rules.FieldRule, ...]] = _rules.NAME_FIELDS

    first_name: str
    last_name: str

    def __attrs_post_init__(self) -> None:
        _validate(self, self.RULES)


@attrs.frozen(kw_only=True)
class Address:
    """The address segment of an update (same rules as on create)."""

    RULES: ClassVar[tuple[_rules.FieldRule, ...]] = _rules.ADDRESS_FIELDS

    address_one: str
    address_two: str | None = None
    city: str
    state: str | None = None
    zip: str | None = None
    country: str

    def __attrs_post_init__(self) -> None:
        _validate(self, self.RULES)


@attrs.frozen(kw_only=True)
class Identity:
    """The ID segment of an update."""

    RULES: ClassVar[tuple[_rules.FieldRule, ...]] = _rules.IDENTITY_FIELDS

    id_number_type: str = attrs.field(converter=_plain)
    id_number: str
    non_us_other_type: str | None = None

    def __attrs_post_init__(self) -> None:
        _validate(self, self.RULES)


_SEGMENT_TYPES: dict[str, type[Name | Address | Identity]] = {
    "name": Name,
    "address": Address,
    "identity": Identity,
}


@attrs.frozen(kw_only=True)
class CustomerUpdate:
    """A verified change to a customer (``PATCH /participants/customers/{code}``).

    Give ``platform_updated_at`` (when your platform verified the change) and at
    least one segment. Each segment is all-or-nothing, so only whole
    :class:`Name`, :class:`Address` or :class:`Identity` objects (and ``email``)
    can be expressed; fields that are not updatable have no place here.
    """

    platform_updated_at: int = attrs.field(converter=_millis)
    name: Name | None = None
    address: Address | None = None
    email: str | None = None
    identity: Identity | None = None

    def __attrs_post_init__(self) -> None:
        problems = _rules.check({"platform_updated_at": self.platform_updated_at}, _UPDATED_AT_RULES)
        for attribute, cls in _SEGMENT_TYPES.items():
            value = getattr(self, attribute)
            if value is not None and not isinstance(value, cls):
                problems.append(Problem(attribute, f"must be a {cls.__name__}, not {type(value).__name__}"))
        if self.email is not None:
            problems.extend(_rules.check({"email": self.email}, _rules.EMAIL_FIELDS))
        if self.name is None and self.address is None and self.email is None and self.identity is None:
            problems.append(
                Problem("segments", "platform_updated_at submitted with no data segment to update")
            )
        if problems:
            raise ValidationError(type(self).__name__, problems)

    def wire_fields(self) -> dict[str, Any]:
        """The flat wire fields (segments in spec order, absent values omitted)."""
        fields: dict[str, Any] = {}
        for segment in (self.name, self.address):
            if segment is not None:
                _add_present(fields, segment)
        if self.email is not None:
            fields["email"] = self.email
        if self.identity is not None:
            _add_present(fields, self.identity)
        fields["platform_updated_at"] = self.platform_updated_at
        return fields


_UPDATED_AT_RULES = (_rules.FieldRule("platform_updated_at", _rules.MILLIS),)


def _add_present(fields: dict[str, Any], segment: Name | Address | Identity) -> None:
    for rule in segment.RULES:
        value = getattr(segment, rule.name)
        if value is not None:
            fields[rule.name] = value


# -- records -------------------------------------------------------------------


class _Record:
    """What every record has: the raw JSON, the attempts it took and its request_id."""

    __slots__ = ()

    @property
    def extra(self) -> dict[str, Any]:
        """Response fields this SDK version does not know, exactly as received."""
        known = {field.name for field in attrs.fields(type(self))}  # type: ignore[arg-type]
        raw: dict[str, Any] = getattr(self, "raw", {})
        return {key: value for key, value in raw.items() if key not in known}


# Records are not slotted: a frozen slotted class sets each of its 20-odd fields
# through object.__setattr__, a dict-based one stores them directly, which
# makes reading a record about 20% faster (benchmarks/RESULTS.md, section 2).
@attrs.frozen(kw_only=True, slots=False)
class Customer(_Record):
    """A customer as the server returned it."""

    participant_code: str | None = None
    platform_code: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    address_one: str | None = None
    address_two: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    date_of_birth: str | None = None
    id_number_type: str | None = None
    id_number: str | None = attrs.field(default=None, repr=False)
    non_us_other_type: str | None = None
    id_issuing_authority: str | None = None
    risk_rating: str | None = None
    signed_timestamp: int | None = None
    prefunded: bool | None = None
    metadata: dict[str, Any] | None = None
    platform_updated_at: int | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    attempts: int = attrs.field(default=1, eq=False)
    request_id: str | None = attrs.field(default=None, eq=False)
    existing: bool = attrs.field(default=False, eq=False)
    """True when this call did not create it: ``reconcile=True`` found it applied earlier
    under another request_id. Then the record is the payload sent plus the
    participant_code found, and ``raw`` is the lookup's answer."""


@attrs.frozen(kw_only=True, slots=False)
class Minor(_Record):
    """A minor as the server returned it (``non_in_other_type`` is read too)."""

    participant_code: str | None = None
    platform_code: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    address_one: str | None = None
    address_two: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    date_of_birth: str | None = None
    id_number_type: str | None = None
    id_number: str | None = attrs.field(default=None, repr=False)
    non_us_other_type: str | None = None
    id_issuing_authority: str | None = None
    utma_signed_timestamp: int | None = None
    custodian_participant_code: str | None = None
    custodian_relationship: str | None = None
    metadata: dict[str, Any] | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    attempts: int = attrs.field(default=1, eq=False)
    request_id: str | None = attrs.field(default=None, eq=False)
    existing: bool = attrs.field(default=False, eq=False)
    """True when this call did not create it (see :attr:`Customer.existing`)."""


@attrs.frozen(kw_only=True, slots=False)
class Participant(_Record):
    """A participant found by the read endpoints."""

    participant_code: str | None = None
    email: str | None = None
    custodian_participant_code: str | None = None
    participant_name: str | None = None
    credit_limit: str | float | None = None
    status: str | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    attempts: int = attrs.field(default=1, eq=False)
