"""validate_spec's shortcut for the common spec shape must never accept what
the full check refuses (it runs in apply, on every replica)."""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from replication.model import (
    MAX_ID_LEN, MAX_PRIORITY, MSGPACK_INT_MAX, _is_common_valid_spec, _validate_spec_fully, validate_spec,
)


class _Str(str):
    pass


_edge_strings = st.sampled_from(["", "a", "x" * MAX_ID_LEN, "x" * (MAX_ID_LEN + 1), _Str("sub")])
_strings = st.one_of(st.text(max_size=5), _edge_strings)
_ints = st.one_of(st.integers(-10, 10), st.sampled_from([MAX_PRIORITY, MAX_PRIORITY + 1, -(2**31) - 1,
                                                           MSGPACK_INT_MAX, MSGPACK_INT_MAX + 1, -(2**63) - 1]))
_scalars = st.one_of(st.none(), st.booleans(), _ints, st.floats(allow_nan=False), _strings, st.binary(max_size=3))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.one_of(_strings, _ints), inner, max_size=3)),
                       max_leaves=6)
_field = st.one_of(_strings, _strings, _values)  # mostly strings: near the accepted shape
_specs = st.fixed_dictionaries(
    {"id": _field, "type": _field},
    optional={"args": st.one_of(st.dictionaries(st.one_of(_strings, _ints), _scalars, max_size=4), _values),
              "queue": st.one_of(st.none(), _field), "priority": st.one_of(st.none(), _ints, _values),
              "delay_ms": _ints, "bogus": _scalars})


@settings(max_examples=800, deadline=None)
@given(_specs)
def test_the_shortcut_accepts_only_what_the_full_check_accepts(spec: dict[str, Any]) -> None:
    if _is_common_valid_spec(spec):
        assert _validate_spec_fully(spec) is None, spec
    assert (validate_spec(spec) is None) == (_validate_spec_fully(spec) is None)


def test_the_shortcut_takes_the_specs_clients_send() -> None:
    for spec in ({"id": "j1", "type": "util.noop", "args": {}},
                 {"id": "j2", "type": "text.wordcount", "args": {"text": "a b", "n": 3, "x": None}, "queue": "q"},
                 {"id": "j3", "type": "t", "priority": -5}):
        assert _is_common_valid_spec(spec), spec
    for spec in ({"id": "", "type": "t"}, {"id": "j", "type": "t", "priority": True},
                 {"id": "j", "type": "t", "args": {"big": MSGPACK_INT_MAX + 1}},
                 {"id": "j", "type": "t", "args": {"nested": {}}}, {"id": "j", "type": "t", "delay_ms": 5}):
        assert not _is_common_valid_spec(spec), spec
    for spec in ({"id": "", "type": "t"}, {"id": "j", "type": "t", "priority": True},
                 {"id": "j", "type": "t", "args": {"big": MSGPACK_INT_MAX + 1}}):
        assert validate_spec(spec) is not None, spec
