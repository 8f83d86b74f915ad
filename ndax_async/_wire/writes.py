"""The three write endpoints and everything a write needs before its first attempt.

:func:`prepare_write` validates a payload (model or mapping) and a pinned
request_id together, encodes the body once as ``JSON.stringify`` would print
it, and fixes the request_id. The client, the bulk engine and the backfill's
``--dry-run`` all call it, so they make exactly the same checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from ..errors import Problem, ValidationError
from ..models import Customer, CustomerUpdate, Minor, NewCustomer, NewMinor
from . import canonical_json, rules
from .convert import structure_payload, to_wire
from .request_ids import RequestIdMode, derive_request_id, normalize_request_id, random_request_id

__all__ = ["ENDPOINTS", "WRITES", "PreparedWrite", "WriteSpec", "prepare_write"]

ENDPOINTS = ("create", "create_minor", "update")
"""The write endpoints by name, as ``send_request_id`` and bulk operations name them."""

P = TypeVar("P", NewCustomer, NewMinor, CustomerUpdate)


@attrs.frozen
class WriteSpec:
    """One write endpoint: its method, route, payload model and record type."""

    method: str
    route: str
    model: type[NewCustomer] | type[NewMinor] | type[CustomerUpdate]
    record: type[Customer] | type[Minor]
    free_fields: tuple[str, ...]
    """The payload fields whose validated value can be any JSON (``metadata``)."""
    needs_code: bool = False


def _free_fields(field_rules: tuple[rules.FieldRule, ...]) -> tuple[str, ...]:
    # A validated string, boolean or unix-ms field holds a str, a bool or an
    # integer below 2**53; any other kind can hold any JSON.
    plain = (rules.STRING, rules.BOOLEAN, rules.MILLIS)
    return tuple(rule.name for rule in field_rules if rule.kind not in plain)


WRITES: dict[str, WriteSpec] = {
    "create": WriteSpec(
        "POST", "/participants/customers/new", NewCustomer, Customer, _free_fields(rules.CUSTOMER_FIELDS)
    ),
    "create_minor": WriteSpec(
        "POST", "/participants/customers/minor", NewMinor, Minor, _free_fields(rules.MINOR_FIELDS)
    ),
    "update": WriteSpec(
        "PATCH",
        "/participants/customers/{code}",
        CustomerUpdate,
        Customer,
        _free_fields(tuple(rule for segment in rules.SEGMENTS.values() for rule in segment)),
        needs_code=True,
    ),
}


@attrs.frozen
class PreparedWrite:
    """A write ready to send: its route, exact body bytes and request_id, fixed."""

    method: str
    route: str
    payload: bytes
    """The canonical payload without request_id."""
    body: bytes
    """The bytes sent and signed: the payload with request_id first, if one is sent."""
    request_id: str | None
    record_type: type[Customer] | type[Minor]

    @property
    def payload_hash(self) -> str:
        """sha256 of the payload without request_id: what "the same operation" means."""
        return hashlib.sha256(self.payload).hexdigest()

    def with_request_id(self, request_id: str) -> PreparedWrite:
        """The same write carrying ``request_id`` (no re-validation, no re-encoding)."""
        return attrs.evolve(self, body=with_request_id(self.payload, request_id), request_id=request_id)


def prepare_write(
    endpoint: str,
    payload: Any,
    *,
    participant_code: str | None = None,
    request_id: object = None,
    request_ids: RequestIdMode = RequestIdMode.DERIVED,
    namespace: str = "",
    send_request_id: bool = True,
) -> PreparedWrite:
    """Validate, encode once and fix the request_id: everything before the first attempt.

    Raises :class:`~ndax_async.errors.ValidationError` naming every problem
    (the participant_code's, the payload's and the pinned request_id's at once).
    """
    spec = WRITES[endpoint]
    problems = rules.check_participant_code(participant_code) if spec.needs_code else []
    try:
        model, pinned = _validated(payload, spec.model, request_id)
    except ValidationError as error:
        raise ValidationError(error.model, [*problems, *error.problems]) from None
    if problems:
        raise ValidationError(spec.model.__name__, problems)
    route = spec.route.format(code=participant_code) if spec.needs_code else spec.route
    payload_bytes = canonical_json.dumps_fields(to_wire(model), spec.free_fields)
    if not send_request_id:
        return PreparedWrite(spec.method, route, payload_bytes, payload_bytes, None, spec.record)
    if pinned is not None:
        rid = pinned
    elif request_ids is RequestIdMode.RANDOM:
        rid = random_request_id()
    else:
        rid = derive_request_id(spec.method, route, payload_bytes, namespace)
    return PreparedWrite(
        spec.method, route, payload_bytes, with_request_id(payload_bytes, rid), rid, spec.record
    )


def with_request_id(payload: bytes, request_id: str) -> bytes:
    """The canonical payload with ``request_id`` as its first key."""
    # Payload keys are model fields (never integer-like), so putting request_id
    # first is exactly where JSON.stringify would keep it.
    head = b'{"request_id":"' + request_id.encode("ascii") + b'"'
    return head + b"}" if payload == b"{}" else head + b"," + payload[1:]


def _validated(payload: P | Mapping[str, Any], cls: type[P], request_id: object) -> tuple[P, str | None]:
    """Validate the payload and a pinned request_id together, reporting every problem.

    A mapping is structured into ``cls``; a ``request_id`` key in it pins the id.
    """
    if request_id is None and type(payload) is cls:
        return payload, None  # a model validated itself when it was built
    problems: list[Problem] = []
    if isinstance(payload, Mapping) and "request_id" in payload:
        embedded = payload["request_id"]
        payload = {key: value for key, value in payload.items() if key != "request_id"}
        if request_id is not None and normalize_request_id(request_id) != normalize_request_id(embedded):
            problems.append(Problem("request_id", "differs from the request_id argument"))
        request_id = embedded if request_id is None else request_id
    pinned = None
    if request_id is not None:
        pinned = normalize_request_id(request_id)
        if pinned is None:
            problems.append(Problem("request_id", "must be a version-4 UUID (or its string)"))
    model: P | None = payload if isinstance(payload, cls) else None
    if model is None:
        try:
            model = structure_payload(payload, cls)
        except ValidationError as error:
            problems.extend(error.problems)
    if problems or model is None:
        raise ValidationError(cls.__name__, problems)
    return model, pinned
