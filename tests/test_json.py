"""Canonical JSON: what JSON.stringify prints, byte for byte."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ndax_async import CustomerUpdate, NewCustomer
from ndax_async._wire import canonical_json as _json
from ndax_async._wire import rules
from ndax_async._wire.canonical_json import dumps, format_number
from ndax_async._wire.convert import to_wire
from ndax_async._wire.writes import WRITES, prepare_write

from .helpers import customer_wire


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (1.5, "1.5"),
        (-2.25, "-2.25"),
        (100.0, "100"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e21, "1.5e+21"),
        (1e16, "10000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (0.000001, "0.000001"),
        (1e-7, "1e-7"),
        (1.234e-7, "1.234e-7"),
        (0.1 + 0.2, "0.30000000000000004"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (float("nan"), "null"),
        (float("inf"), "null"),
        (float("-inf"), "null"),
    ],
)
def test_numbers_format_as_javascript(value: float, expected: str) -> None:
    assert format_number(value) == expected


def test_integers_beyond_2_53_round_like_a_double() -> None:
    assert dumps(2**53 - 1) == b"9007199254740991"
    assert dumps(2**53 + 1) == b"9007199254740992"
    assert dumps(10**21) == b"1e+21"
    assert dumps(10**400) == b"null"


def test_compact_utf8_not_escaped() -> None:
    assert dumps({"name": "Gaurav Mehta", "city": "मुंबई", "emoji": "😀"}) == (
        '{"name":"Gaurav Mehta","city":"मुंबई","emoji":"😀"}'.encode()
    )


def test_escapes_like_javascript() -> None:
    text = 'quote " backslash \\ newline \n tab \t cr \r bs \b ff \f nul \x00 us \x1f del \x7f ls \u2028'
    expected = (
        '"quote \\" backslash \\\\ newline \\n tab \\t cr \\r bs \\b ff \\f nul \\u0000 us \\u001f '
        'del \x7f ls \u2028"'
    )
    assert dumps(text) == expected.encode()


def test_lone_surrogates_are_escaped_pairs_joined() -> None:
    assert dumps("a\ud800b") == b'"a\\ud800b"'
    assert dumps("\ud83d\ude00") == '"😀"'.encode()


def test_integer_like_keys_first_ascending_then_insertion_order() -> None:
    value = {"b": 1, "10": 2, "a": 3, "2": 4, "01": 5, "-1": 6, "4294967295": 7, "4294967294": 8}
    assert dumps(value) == b'{"2":4,"10":2,"4294967294":8,"b":1,"a":3,"01":5,"-1":6,"4294967295":7}'


def test_nested_structures_and_literals() -> None:
    assert dumps({"a": [1, True, None, {"z": False}], "t": (1, 2)}) == (
        b'{"a":[1,true,null,{"z":false}],"t":[1,2]}'
    )


def test_rejects_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        dumps({1: "x"})
    with pytest.raises(TypeError):
        dumps({"when": object()})


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.sampled_from(["0", "7", "01", "1a"]), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(_JSON_VALUES)
def test_fast_path_writes_exactly_what_the_full_encoder_writes(value: object) -> None:
    parts: list[str] = []
    _json._encode(value, parts.append)
    assert _json.dumps(value) == "".join(parts).encode("utf-8")


def test_a_payloads_free_form_metadata_is_still_written_as_stringify_would() -> None:
    # Only metadata is checked before the fast path (the other fields are validated
    # strings, booleans and timestamps), so a float or a digit-led key in it must
    # still take the full encoder.
    customer = NewCustomer(**customer_wire(metadata={"b": 1.0, "2": 1e21, "a": [0.5, 2**60]}))
    prepared = prepare_write("create", customer)
    assert prepared.payload.endswith(b',"metadata":{"2":1e+21,"b":1,"a":[0.5,1152921504606847000]}}')
    assert prepared.payload == dumps(to_wire(customer))


def test_every_payload_field_has_a_rule_so_only_free_fields_need_the_check() -> None:
    # dumps_fields trusts every field outside WriteSpec.free_fields to be a
    # validated str, bool or timestamp: a field without a rule would break that.
    for spec in WRITES.values():
        if spec.model is CustomerUpdate:
            continue  # built from its segments, whose fields are all rule-checked strings
        model_rules = spec.model.RULES
        assert [field.name for field in attrs.fields(spec.model)] == [rule.name for rule in model_rules]
        assert {rule.kind for rule in model_rules} <= {
            rules.STRING,
            rules.BOOLEAN,
            rules.MILLIS,
            rules.OBJECT,
        }
        assert spec.free_fields == tuple(r.name for r in model_rules if r.kind == rules.OBJECT)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES, st.text(max_size=6))
def test_dumps_fields_writes_what_dumps_writes(metadata: object, name: str) -> None:
    fields = {"first_name": name, "signed_timestamp": 1603378501286, "prefunded": True, "metadata": metadata}
    assert _json.dumps_fields(fields, ("metadata",)) == dumps(fields)
