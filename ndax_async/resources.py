"""The API's resources on a client: ``client.customers`` (writes) and ``client.participants`` (reads).

``reconcile=True`` on the two creates turns a ``DuplicatePayloadError`` (this
exact payload was applied earlier under a request_id this SDK did not make,
e.g. by an older integration) into the existing participant, found by email:
see :meth:`Customers.reconcile`.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ._sending.budget import Priority
from ._sending.senders import RawResponse
from ._wire.convert import read_record
from ._wire.writes import WRITES, PreparedWrite
from .errors import DuplicatePayloadError, MalformedResponseError, Problem, ValidationError
from .models import Customer, CustomerUpdate, Minor, NewCustomer, NewMinor, Participant

if TYPE_CHECKING:
    from .client import AsyncClient

__all__ = ["Customers", "ParticipantPage", "Participants", "malformed_response"]

RecordT = TypeVar("RecordT", Customer, Minor)
_CREATE_ROUTES = frozenset({WRITES["create"].route, WRITES["create_minor"].route})


class Customers:
    """The write endpoints: create a customer or a minor, update a customer.

    Each takes ``request_id=`` to pin the id, and ``timeout=``, ``max_retries=``,
    ``deadline=`` and ``priority=`` (its class in a shared budget) for this call only.
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        customer: NewCustomer | Mapping[str, Any],
        *,
        request_id: object = None,
        reconcile: bool = False,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        priority: Priority | None = None,
    ) -> Customer:
        """Create a customer (``POST /participants/customers/new``).

        Safe to call again for the same customer: with the default derived
        request_id the server replays the original result. With
        ``reconcile=True``, a customer applied earlier under another
        request_id is returned with ``existing=True`` instead of raising
        ``DuplicatePayloadError`` (see :meth:`reconcile`).
        """
        prepared = self._client.prepare_write("create", customer, request_id=request_id)
        return await self._create(prepared, Customer, reconcile, timeout, max_retries, deadline, priority)

    async def create_minor(
        self,
        minor: NewMinor | Mapping[str, Any],
        *,
        request_id: object = None,
        reconcile: bool = False,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        priority: Priority | None = None,
    ) -> Minor:
        """Create a minor under a custodian (``POST /participants/customers/minor``).

        ``reconcile=True`` as for :meth:`create`.
        """
        prepared = self._client.prepare_write("create_minor", minor, request_id=request_id)
        return await self._create(prepared, Minor, reconcile, timeout, max_retries, deadline, priority)

    async def reconcile(
        self, prepared: PreparedWrite, error: DuplicatePayloadError, *, timeout: float | None = None
    ) -> Customer | Minor:
        """The participant a create's ``DuplicatePayloadError`` says exists, looked up by email.

        ``prepared`` is the create that got ``error`` (from
        ``client.prepare_write``). Returns its record type (``Customer`` or
        ``Minor``) with ``existing=True``: the payload sent plus the
        participant_code found (``raw`` is the lookup's answer, ``attempts``
        counts both calls). Raises ``error`` again when no participant has
        the payload's email (or ``prepared`` is not a create). A
        ``ParticipantExistsError`` (another person under that email) never
        comes here: it stays an error.
        """
        if prepared.route not in _CREATE_ROUTES:
            raise error
        if prepared.record_type is Minor:
            return await self._reconciled(prepared, Minor, error, timeout)
        return await self._reconciled(prepared, Customer, error, timeout)

    async def _create(
        self,
        prepared: PreparedWrite,
        record_type: type[RecordT],
        reconcile: bool,
        timeout: float | None,
        max_retries: int | None,
        deadline: float | None,
        priority: Priority | None,
    ) -> RecordT:
        try:
            record: RecordT = await self._client.send_write(
                prepared, timeout=timeout, max_retries=max_retries, deadline=deadline, priority=priority
            )
        except DuplicatePayloadError as error:
            if not reconcile:
                raise
            return await self._reconciled(prepared, record_type, error, timeout)
        return record

    async def _reconciled(
        self,
        prepared: PreparedWrite,
        record_type: type[RecordT],
        error: DuplicatePayloadError,
        timeout: float | None,
    ) -> RecordT:
        sent: dict[str, Any] = json.loads(prepared.payload)
        found = await self._client.participants.get_by_email(str(sent.get("email", "")), timeout=timeout)
        if found is None or not found.participant_code:
            raise error
        record = read_record(
            {**sent, "participant_code": found.participant_code},
            record_type,
            attempts=error.attempts + found.attempts,
            request_id=prepared.request_id,
            existing=True,
        )
        return attrs.evolve(record, raw=found.raw)

    async def update(
        self,
        participant_code: str,
        update: CustomerUpdate | Mapping[str, Any],
        *,
        request_id: object = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        priority: Priority | None = None,
    ) -> Customer:
        """Apply a verified change (``PATCH /participants/customers/{participant_code}``).

        A mapping may be the flat wire shape (``platform_updated_at`` plus the
        fields of each segment) or hold ``name``/``address``/``identity``.
        """
        prepared = self._client.prepare_write(
            "update", update, participant_code=participant_code, request_id=request_id
        )
        record: Customer = await self._client.send_write(
            prepared, timeout=timeout, max_retries=max_retries, deadline=deadline, priority=priority
        )
        return record


@attrs.frozen
class ParticipantPage:
    """One page of ``GET /participants``."""

    participants: tuple[Participant, ...]
    page: int
    total_pages: int
    page_size: int | None
    count: int | None
    raw: dict[str, Any] = attrs.field(repr=False, eq=False)


class Participants:
    """The read endpoints: find participants again (for reconciliation)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get_by_email(
        self, email: str, *, timeout: float | None = None, priority: Priority | None = None
    ) -> Participant | None:
        """``GET /participants/{email}``: the participant, or ``None`` if there is none."""
        if not isinstance(email, str) or not email.strip():
            raise ValidationError("request", [Problem("email", "required (a non-empty string)")])
        route = "/participants/" + urllib.parse.quote(email, safe="@+")
        data, attempts, raw = await self._client.send_json(
            "GET", route, None, request_id=None, timeout=timeout, not_found_ok=True, priority=priority
        )
        if data is None:
            return None
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict):
            raise malformed_response("a 'message' object", raw, data, None, attempts)
        return read_record(message, Participant, attempts=attempts)

    async def list_pages(
        self,
        *,
        email: str | None = None,
        participant_code: str | None = None,
        status: str | None = None,
        minors: bool | None = None,
        page: int = 1,
        timeout: float | None = None,
        priority: Priority | None = None,
    ) -> AsyncIterator[ParticipantPage]:
        """``GET /participants``, page by page from ``page`` to the last."""
        while True:
            query = _query(
                email=email, participant_code=participant_code, page=page, minors=minors, status=status
            )
            data, attempts, raw = await self._client.send_json(
                "GET", "/participants?" + query, None, request_id=None, timeout=timeout, priority=priority
            )
            result = _read_page(data, attempts, page, raw)
            yield result
            if not result.participants or result.page >= result.total_pages:
                return
            page = result.page + 1

    async def list(
        self,
        *,
        email: str | None = None,
        participant_code: str | None = None,
        status: str | None = None,
        minors: bool | None = None,
        timeout: float | None = None,
        priority: Priority | None = None,
    ) -> AsyncIterator[Participant]:
        """Every participant matching the filters, across every page."""
        async for result in self.list_pages(
            email=email,
            participant_code=participant_code,
            status=status,
            minors=minors,
            timeout=timeout,
            priority=priority,
        ):
            for participant in result.participants:
                yield participant


def _query(**params: object) -> str:
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        pairs.append(f"{key}={urllib.parse.quote(text, safe='')}")
    return "&".join(pairs)


def _read_page(data: Any, attempts: int, requested_page: int, raw: RawResponse | None) -> ParticipantPage:
    items = data.get("message") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise malformed_response("a 'message' list", raw, data, None, attempts)
    participants = tuple(
        read_record(item, Participant, attempts=attempts) for item in items if isinstance(item, dict)
    )
    page = _int_or(data.get("page"), requested_page)
    return ParticipantPage(
        participants=participants,
        page=page,
        total_pages=_int_or(data.get("total_pages"), page),
        page_size=_int_or(data.get("page_size"), None),
        count=_int_or(data.get("count"), None),
        raw=data,
    )


def _int_or(value: Any, default: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def malformed_response(
    expected: str, raw: RawResponse | None, data: Any, request_id: str | None, attempts: int
) -> MalformedResponseError:
    """The error for a 2xx whose JSON is not the documented shape (it keeps the raw text)."""
    return MalformedResponseError(
        f"the response is not the documented shape (expected {expected})",
        status_code=raw.status_code if raw is not None else 200,
        body=data,
        raw_text=raw.text if raw is not None else json.dumps(data, ensure_ascii=False),
        request_id=request_id,
        attempts=attempts,
        headers=raw.header_dict() if raw is not None else None,
    )
