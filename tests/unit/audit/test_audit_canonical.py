"""The fast canonical encoding is RFC 8785 byte for byte wherever it is used, and is only used where
the caller parsed the value and found only numbers Python and JCS write alike."""

import json

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from keel_audit.canonical import MAX_EXACT_INT, PLAIN_FLOATS, canonical_bytes, parse_json_body

# Every kind of text JCS treats specially: controls, quotes, backslashes, DEL, BMP private use (which
# sorts after astral characters in UTF-16), astral characters, line separators.
text = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0, max_codepoint=0x7F),
        st.sampled_from(["\u2028", "\u2029", "\ue000", "\uffff", "\U0001f4a5", "\U00010000", "é", "中"]),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=12,
)
integers = st.integers(min_value=-MAX_EXACT_INT, max_value=MAX_EXACT_INT)
plain_floats = st.floats(min_value=PLAIN_FLOATS[0], max_value=PLAIN_FLOATS[1], exclude_max=True).filter(
    lambda f: not f.is_integer()
) | st.sampled_from([0.05, 0.1, 0.3, 123.456, 1e-4, 1234567.891, 2.5])
plain_numbers = integers | plain_floats | plain_floats.map(lambda f: -f)
json_values = st.recursive(
    st.none() | st.booleans() | plain_numbers | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_values_with_plain_numbers_encode_exactly_as_rfc_8785(value):
    assert canonical_bytes(value, plain_numbers=True) == rfc8785.dumps(value)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_a_parsed_body_says_whether_it_holds_only_plain_numbers(value):
    body = parse_json_body(json.dumps(value).encode())
    assert body.is_json and body.plain_numbers
    assert canonical_bytes(body.value, plain_numbers=True) == rfc8785.dumps(value)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_float_in_a_body_canonicalises_exactly_as_rfc_8785(number):
    body = parse_json_body(json.dumps({"x": number}).encode())
    expected = rfc8785.dumps({"x": number}) if abs(number) < 1e300 else None
    if expected is not None:
        assert canonical_bytes(body.value, plain_numbers=body.plain_numbers) == expected


def test_an_integral_float_is_the_integer_jcs_writes():
    body = parse_json_body(b'{"timeout_seconds": 30.0, "zero": -0.0}')
    assert body.plain_numbers
    assert canonical_bytes(body.value, plain_numbers=True) == b'{"timeout_seconds":30,"zero":0}'
    assert rfc8785.dumps({"timeout_seconds": 30.0, "zero": -0.0}) == b'{"timeout_seconds":30,"zero":0}'


def test_floats_written_differently_and_huge_integers_are_left_to_the_general_encoder():
    assert parse_json_body(b'{"amount": 1.5}').plain_numbers
    assert not parse_json_body(b'{"n": 1e-5}').plain_numbers  # Python writes 1e-05, JCS 0.00001
    assert not parse_json_body(b'{"n": 1.5e16}').plain_numbers  # Python 1.5e+16, JCS 15000000000000000
    # JCS writes 1e16 as 10000000000000000; the standard library would write 1e+16.
    assert canonical_bytes(json.loads("1e16")) == b"10000000000000000"
    huge = parse_json_body(str(MAX_EXACT_INT + 1).encode())
    assert not huge.is_json  # not canonicalisable: kept byte-exact as base64


def test_keys_that_sort_differently_in_utf_16_fall_back_to_the_general_encoder():
    value = {"\ue000": 1, "\U0001f4a5": 2}  # code point order and UTF-16 order disagree
    assert canonical_bytes(value, plain_numbers=True) == rfc8785.dumps(value)
    assert list(json.loads(canonical_bytes(value, plain_numbers=True))) == ["\U0001f4a5", "\ue000"]


def test_a_lone_surrogate_is_not_canonical_json_and_is_kept_as_base64():
    assert not parse_json_body(b'{"s": "\\ud800"}').is_json
