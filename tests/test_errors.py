"""Every documented error shape becomes a typed error with a useful message."""

from __future__ import annotations

import httpx
import pytest
import respx

from ndax_async import (
    APIError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    DuplicatePayloadError,
    IdempotencyConflictError,
    NDAXError,
    NotFoundError,
    ParticipantExistsError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from ndax_async.errors import error_from_response

from .helpers import customer_wire


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (
            400,
            '{"errors": ["first_name required field", "zip should match format 12345"]}',
            BadRequestError,
            "first_name required field; zip should match format 12345",
        ),
        (401, '{"error": true, "message": "Invalid signature"}', AuthenticationError, "Invalid signature"),
        (403, '{"error": true, "message": "IP not allowed"}', PermissionDeniedError, "IP not allowed"),
        (404, '{"error": "Not Found"}', NotFoundError, "Not Found"),
        (500, '{"error": "Internal Server Error"}', ServerError, "Internal Server Error"),
        (503, "<html><body>Service Unavailable</body></html>", ServerError, "Service Unavailable"),
        (429, "", RateLimitError, "rate limited"),
        (418, "[1, 2]", APIError, "1; 2"),
        (400, '{"errors": "single string"}', BadRequestError, "single string"),
        (400, '{"errors": [{"field": "zip"}]}', BadRequestError, '{"field": "zip"}'),
        (400, '"bare string"', BadRequestError, "bare string"),
        (400, '{"errors": [', BadRequestError, '{"errors": ['),
    ],
)
def test_error_shapes(status: int, body: str, cls: type[APIError], message: str) -> None:
    error = error_from_response(status, body, request_id="rid")
    assert type(error) is cls
    assert error.message == message
    assert error.raw_text == body
    assert error.status_code == status
    assert error.request_id == "rid"
    assert isinstance(error, NDAXError)
    assert f"HTTP {status}" in str(error)


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ("Participant data already used with different requestID", DuplicatePayloadError),
        ("requestID already used with different participant data", IdempotencyConflictError),
        ("request_id has already been used with a different payload", IdempotencyConflictError),
        ("Participant already exists with this email for this platform", ParticipantExistsError),
        ("Data segment validation failed.", BadRequestError),
    ],
)
def test_idempotency_and_duplicate_400s_are_typed(text: str, cls: type[APIError]) -> None:
    error = error_from_response(400, f'{{"errors": ["{text}"]}}', request_id=None)
    assert type(error) is cls
    assert isinstance(error, BadRequestError)
    assert error.errors == (text,)


def test_huge_non_json_bodies_are_shortened_in_the_message_but_kept_raw() -> None:
    body = "x" * 100_000
    error = error_from_response(502, body, request_id=None)
    assert len(error.message) < 400
    assert error.raw_text == body


async def test_clock_skew_is_explained_on_401(client: AsyncClient, mock: respx.MockRouter) -> None:
    mock.post("/participants/customers/new").mock(
        return_value=httpx.Response(
            401,
            json={"error": True, "message": "Timestamp expired"},
            headers={"Date": "Thu, 01 Jan 2026 00:00:00 GMT"},
        )
    )
    with pytest.raises(AuthenticationError, match=r"local clock is .* behind the server's Date header"):
        await client.customers.create(customer_wire())
