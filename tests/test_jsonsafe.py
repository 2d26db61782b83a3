"""``bridge.core.jsonsafe``: the bounds every JSON from outside is parsed with.

The process imports web3 (and so py_ecc, which raises the recursion limit to 100,000): the
very setting under which Python's own decoder crashes on deep nesting."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import web3  # noqa: F401 - the recursion limit of the daemons
from bridge.core.jsonsafe import MAX_DEPTH, JsonRefused, check_depth, loads

_scalars = st.none() | st.booleans() | st.integers(-(2**256), 2**256) | st.text(max_size=20) | st.floats(allow_nan=False, allow_infinity=False, width=32)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(_values)
def test_what_json_writes_is_read_back_unchanged(value):
    assert loads(json.dumps(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3 * MAX_DEPTH), st.integers(0, 5), st.text(alphabet='[]{}"\\,', max_size=12))
def test_depth_is_refused_exactly_beyond_the_bound(depth, siblings, noise):
    """Nested lists beside shallow siblings, and strings full of brackets and escapes."""
    nested: object = []
    for _ in range(depth - 1):
        nested = [nested]
    doc = {"noise": noise, "siblings": [[[]]] * siblings, "deep": nested}
    text = json.dumps(doc)
    if _depth(doc) <= MAX_DEPTH:
        assert loads(text) == doc
    else:
        with pytest.raises(JsonRefused, match="nested deeper"):
            check_depth(text.encode())


@pytest.mark.parametrize(
    "text, reason",
    [
        ("[NaN]", "NaN"),
        ("[-Infinity]", "Infinity"),
        ("[1e400]", "out of range"),
        ("[" + "9" * 101 + "]", "out of range"),
        ('{"a": 1', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[1]]", "not valid JSON"),
    ],
)
def test_what_is_not_bounded_json_is_refused_with_a_reason(text, reason):
    with pytest.raises(JsonRefused, match=reason):
        loads(text)


def test_size_bound_is_413_and_numbers_keep_their_precision():
    with pytest.raises(JsonRefused) as refused:
        loads(b" " * 11, max_bytes=10)
    assert refused.value.status == 413
    assert loads("[0.1, 12345678901234567890]", parse_float=Decimal) == [Decimal("0.1"), 12345678901234567890]
    assert loads('["' + "9" * 500 + '"]') == ["9" * 500]  # long digit runs inside strings are text
    assert math.isclose(loads("[4.6e-10]")[0], 4.6e-10)


def test_a_deeply_nested_body_is_refused_not_a_crash():
    """Python's decoder on the same body kills the process (exit -11); the bounded one refuses it."""
    body = "b'[' * 100_000 + b']' * 100_000"
    crash = subprocess.run([sys.executable, "-c", f"import web3, json; json.loads({body})"], capture_output=True)
    program = f"import web3\nfrom bridge.core.jsonsafe import loads, JsonRefused\ntry: loads({body})\nexcept JsonRefused as e: print(e.message)"
    refused = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert crash.returncode != 0
    assert refused.returncode == 0 and "nested deeper than" in refused.stdout
