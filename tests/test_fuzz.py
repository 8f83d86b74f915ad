"""Fuzzing (hypothesis): no input crashes the models, no response crashes the parser.

- Any payload either builds a model that encodes, or raises ``ValidationError``
  naming fields; through the client, a refused payload sends nothing.
- Any response (status, random JSON shapes, non-JSON, truncated, huge, wrong
  types in ``message``) becomes a record or a typed ``APIError`` whose
  ``raw_text`` is the body exactly as received.

``NDAX_FUZZ_EXAMPLES`` raises the number of examples (CI runs the default).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from typing import Any

import attrs
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ndax_async import AsyncClient, Customer, CustomerUpdate, NewCustomer, NewMinor, RetryPolicy
from ndax_async._wire import canonical_json as _json
from ndax_async._wire.convert import structure_payload, to_wire
from ndax_async._wire.writes import prepare_write
from ndax_async.errors import APIError, MalformedResponseError, ValidationError
from ndax_async.testing import FakeClock

from .helpers import API_KEY, API_SECRET, PASSPHRASE, customer_wire, minor_wire

EXAMPLES = int(os.environ.get("NDAX_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(codec=None), max_size=40)
    | st.sampled_from(["", " ", "1985-09-02", "2012-02-30", "ssn", "IL", "United States", "India", "\ud800"])
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.none() | st.just(dt.timezone.utc))
    | st.dates()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid payload with some fields replaced by anything, removed, or added."""
    keys = sorted(base)
    return st.builds(
        lambda changes, removed, added: {
            **{k: v for k, v in base.items() if k not in removed},
            **changes,
            **added,
        },
        st.dictionaries(st.sampled_from(keys), _VALUES, max_size=4),
        st.sets(st.sampled_from(keys), max_size=3),
        st.dictionaries(st.text(max_size=10), _VALUES, max_size=2),
    )


_UPDATES = st.fixed_dictionaries(
    {},
    optional={
        "platform_updated_at": _VALUES | st.integers(1_600_000_000_000, 1_900_000_000_000),
        "first_name": _VALUES | st.just("Ada"),
        "last_name": _VALUES | st.just("Lovelace"),
        "email": _VALUES | st.just("ada@example.com"),
        "address_one": _VALUES,
        "city": _VALUES,
        "country": _VALUES | st.just("India"),
        "name": _VALUES,
        "address": _VALUES,
        "identity": _VALUES,
    },
)

_PAYLOADS = st.one_of(
    st.tuples(st.just(NewCustomer), _mutated(customer_wire())),
    st.tuples(st.just(NewMinor), _mutated(minor_wire())),
    st.tuples(st.just(CustomerUpdate), _UPDATES),
    st.tuples(st.sampled_from([NewCustomer, NewMinor, CustomerUpdate]), _VALUES),
)


def _check_payload(cls: type[Any], data: Any) -> bool:
    """True if ``data`` builds a model (which must then encode); False if refused properly."""
    try:
        model = structure_payload(data, cls)
    except ValidationError as error:
        assert error.problems, error
        assert all(isinstance(p.field, str) and p.field for p in error.problems), error.problems
        assert all(isinstance(p.message, str) and p.message for p in error.problems), error.problems
        return False
    body = _json.dumps(to_wire(model))
    json.loads(body)
    # prepare_write checks only the free-form fields before its fast path: same bytes.
    endpoint = {NewCustomer: "create", NewMinor: "create_minor", CustomerUpdate: "update"}[cls]
    assert prepare_write(endpoint, model, participant_code="P0000001").payload == body
    # Rebuilding from its own fields gives the same model: construction is total too.
    assert attrs.evolve(model) == model
    return True


@FUZZ
@given(_PAYLOADS)
def test_any_payload_builds_or_is_refused_by_field(case: tuple[type[Any], Any]) -> None:
    cls, data = case
    _check_payload(cls, data)


class _Counting(httpx.AsyncBaseTransport):
    """Counts requests; answers every one with a created record echoing the body."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        body = json.loads(request.content) if request.content else {}
        return httpx.Response(200, json={"message": {**body, "participant_code": "FUZZ01"}})


@FUZZ
@given(_PAYLOADS)
def test_a_refused_payload_sends_nothing(case: tuple[type[Any], Any]) -> None:
    cls, data = case
    valid = _check_payload(cls, data)
    counting = _Counting()

    async def call() -> None:
        client = AsyncClient(
            api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE, transport=counting
        )
        async with client:
            if cls is NewCustomer:
                await client.customers.create(data)
            elif cls is NewMinor:
                await client.customers.create_minor(data)
            else:
                await client.customers.update("P0000001", data)

    try:
        asyncio.run(call())
    except ValidationError:
        assert not valid
        assert counting.requests == 0  # never a partial send
    else:
        assert valid
        assert counting.requests == 1


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
_MESSAGES = _JSON | st.fixed_dictionaries(
    {},
    optional={
        "participant_code": _JSON,
        "email": _JSON,
        "first_name": _JSON,
        "status": _JSON,
        "signed_timestamp": _JSON,
        "prefunded": _JSON,
        "metadata": _JSON,
    },
)


def _text_bodies() -> st.SearchStrategy[str]:
    documents = st.one_of(
        st.builds(lambda m: json.dumps({"message": m}), _MESSAGES),
        st.builds(lambda m, e: json.dumps({"error": e, "message": m}), _JSON, _JSON),
        st.builds(json.dumps, _JSON),
    )
    truncated = st.builds(lambda text, cut: text[: max(0, len(text) - cut)], documents, st.integers(1, 30))
    huge = st.builds(
        lambda n: json.dumps({"message": {"first_name": "x" * n}}), st.integers(100_000, 300_000)
    )
    return st.one_of(
        documents, truncated, st.text(max_size=200), huge, st.just(""), st.just("<html>502</html>")
    )


_STATUSES = st.sampled_from(
    [200, 201, 204, 301, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503]
) | st.integers(200, 599)


@FUZZ
@given(_STATUSES, _text_bodies(), st.booleans())
def test_any_response_becomes_a_record_or_a_typed_error(status: int, text: str, as_bytes: bool) -> None:
    body = text.encode("utf-8", "surrogatepass") if as_bytes else text.encode("utf-8", "replace")

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    async def call() -> Any:
        client = AsyncClient(
            api_key=API_KEY,
            api_secret=API_SECRET,
            passphrase=PASSPHRASE,
            transport=httpx.MockTransport(answer),
            retry_policy=RetryPolicy(max_retries=0),
            max_retries=0,
            clock=FakeClock(),
        )
        async with client:
            return await client.customers.create(customer_wire())

    try:
        record = asyncio.run(call())
    except APIError as error:
        assert error.raw_text == body.decode("utf-8", "replace")
        assert error.status_code == status
        if 200 <= status < 300:
            assert isinstance(error, MalformedResponseError)
    else:
        assert 200 <= status < 300
        assert isinstance(record, Customer)
        assert record.raw == json.loads(body)["message"]
