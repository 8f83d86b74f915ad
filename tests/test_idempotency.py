"""Derived request_ids: stable across SDK versions, and always a version-4 UUID."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ndax_async._wire.request_ids import _as_uuid4, derive_request_id, key_to_request_id, normalize_request_id


def test_derived_ids_never_change_between_versions() -> None:
    # A journal written by an earlier version resumes with the ids it recorded;
    # a worker on a new version must still derive the same id for the same
    # operation, or a replay becomes a 400 (new id, same payload).
    assert derive_request_id("POST", "/participants/customers/new", b'{"a":1}') == (
        "1e212c73-0088-45a2-a2e4-455b4e83779c"
    )
    assert derive_request_id("PATCH", "/participants/customers/AB12", b"{}", "ns") == (
        "43a52705-11e9-46c5-8843-89030e52194e"
    )
    assert key_to_request_id("k") == "aa5f8f17-3f77-4739-8836-468b7e4d7d13"


def test_namespace_method_and_route_are_not_confusable() -> None:
    # Length-prefixed parts: moving a character between parts changes the id.
    assert derive_request_id("POST", "/ab", b"{}", "x") != derive_request_id("POST", "/ab", b"{}", "xP")
    assert derive_request_id("POST", "/a", b"b{}") != derive_request_id("POST", "/ab", b"{}")


@given(st.binary(min_size=16, max_size=16))
def test_uuid_formatting_matches_the_uuid_module(raw: bytes) -> None:
    formatted = _as_uuid4(raw)
    assert formatted == str(uuid.UUID(bytes=raw, version=4))
    parsed = uuid.UUID(formatted)
    assert parsed.version == 4
    assert parsed.variant == uuid.RFC_4122


def _by_the_uuid_module(value: str) -> str | None:
    """What normalize_request_id answered before its fast path: parse, check, print."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    return str(parsed) if parsed.version == 4 and parsed.variant == uuid.RFC_4122 else None


@given(
    st.binary(min_size=16, max_size=16),
    st.booleans(),
    st.sampled_from([str, str.upper, lambda s: "{" + s + "}", lambda s: s.replace("-", "")]),
)
def test_normalizing_a_request_id_agrees_with_the_uuid_module(raw: bytes, v4: bool, spelling: Any) -> None:
    """Any UUID (a v4 half the time) in any spelling uuid.UUID accepts."""
    parsed = uuid.UUID(bytes=raw, version=4) if v4 else uuid.UUID(bytes=raw)
    value = spelling(str(parsed))
    assert normalize_request_id(value) == _by_the_uuid_module(value)
    assert normalize_request_id(parsed) == _by_the_uuid_module(str(parsed))


@given(st.text(alphabet="0123456789abcdefABCDEF-{}x", max_size=40))
def test_normalizing_any_text_agrees_with_the_uuid_module(value: str) -> None:
    assert normalize_request_id(value) == _by_the_uuid_module(value)
