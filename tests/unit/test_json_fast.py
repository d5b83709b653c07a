"""flowpro._json gives exactly the standard library's values and errors, faster."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowpro._json import compact, loads
from tests.conftest import run_in_threads

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(JSON, st.booleans())
def test_compact_matches_json_dumps(value, ascii_only):
    expected = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=ascii_only)
    assert compact(value, ascii_only=ascii_only) == expected


@given(JSON, st.sampled_from(["", " ", "\n "]))
def test_loads_matches_json_loads(value, pad):
    text = pad + json.dumps(value) + pad
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text.encode())


@pytest.mark.parametrize("text", ["", "{", '{"a":1} x', "[1,]", "nul", '"\\ud800', "\xff"])
def test_loads_raises_what_json_raises(text):
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    with pytest.raises(type(expected.value)):
        loads(text)


def test_loads_accepts_the_constants_json_accepts():
    assert math.isnan(loads("NaN"))
    assert loads("[Infinity]") == [math.inf]


def test_compact_refuses_what_strict_json_refuses():
    with pytest.raises(ValueError, match="Out of range float"):
        compact({"a": math.nan})
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        compact({"a": {1}})
    circular: dict[str, object] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        compact(circular)


def test_a_failed_call_leaves_nothing_behind():
    # The C encoder used to keep per-call markers: after an error mid-value, the next call
    # with the same objects must still succeed.
    shared = {"a": [1, 2]}
    with pytest.raises(TypeError):
        compact({"ok": shared, "bad": {1}})
    assert compact({"ok": shared}) == '{"ok":{"a":[1,2]}}'


def test_default_is_used_for_unknown_values():
    def default(value: object) -> object:
        return sorted(value) if isinstance(value, set) else str(value)

    assert compact({"s": {2, 1}}, default=default) == '{"s":[1,2]}'


def test_the_same_value_encoded_from_many_threads_at_once():
    value = {"rows": [{"id": i, "name": f"n{i}"} for i in range(50)]}
    expected = json.dumps(value, separators=(",", ":"))
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(300):
                results.append(compact(value))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    run_in_threads(run, 8)
    assert not errors
    assert len(results) == 2_400
    assert set(results) == {expected}
