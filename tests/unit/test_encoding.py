"""kpistream.encoding: the one JSON encoder, right-sized because its output is kept."""

from __future__ import annotations

import tracemalloc

import orjson
from hypothesis import given
from hypothesis import strategies as st

from kpistream.encoding import json_bytes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_the_bytes_are_orjsons(value: object) -> None:
    assert json_bytes(value) == orjson.dumps(value)
    assert type(json_bytes(value)) is bytes


def test_a_kept_result_costs_its_size_not_orjsons_buffer() -> None:
    profile = {f"field_{i}": 123.456 for i in range(27)}  # ~500 bytes, like a profile
    size = len(json_bytes(profile))
    tracemalloc.start()
    try:
        kept = [json_bytes(profile) for _ in range(1000)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == 1000
    # a bytes object's header is ~33 bytes; orjson's own buffer would be >= 4 KB each
    assert held < 1000 * (size + 100) + 20_000
