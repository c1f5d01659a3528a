"""Property tests of the units grammar (``lib/units.py``) on hostile input.

Generated from the grammar's own tokens (so that deep, long and huge
expressions are reached, not only random text): only :class:`UnitsError`
may escape, every message is one line, results stay within the documented
bounds, and each example is cheap (no 10^999999 computed, no 5000-digit
int).
"""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from ganeti_ovf.errors import UnitsError
from ganeti_ovf.units import MAX_MULTIPLIER, parse_byte_units, resolve_properties, to_bytes

PER_EXAMPLE = 1.0  # seconds; real work is microseconds

_NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(str),
    st.sampled_from(["0", "2", "10", "1024", "0.5", ".5", "1.", "00", "9" * 400,
                     "1" + "0" * 309, "3.14159"]),
)
_EXPONENTS = st.one_of(
    st.integers(min_value=-3, max_value=5000).map(str),
    st.sampled_from(["999999999", "-1", "0.5", "+2", "1e9", "99999999999"]),
)
_WORDS = st.sampled_from([
    "byte", "bytes", "B", "KB", "MegaBytes", "gibibyte", "yottabyte", "hertz", "count",
    "percent", "megahertz", "bit", "kilo byte", "Processor Cores", "é", "byte\u00a0", "",
])
_ELEMENT = st.tuples(st.one_of(_NUMBERS, _WORDS),
                     st.one_of(st.just(""), _EXPONENTS.map(lambda e: "^" + e)))
_OPS = st.sampled_from(["*", "/", " * ", "/ ", "**", "^", "", "+", "-"])
_SPACE = st.sampled_from(["", " ", "\t", "  ", "\n"])


@st.composite
def programmatic_units(draw) -> str:
    """A DSP0004-like expression: element (op element)*, maybe signed."""
    elements = draw(st.lists(_ELEMENT, min_size=1, max_size=12))
    parts = [draw(st.sampled_from(["", "-", "+"]))]
    for i, (base, exp) in enumerate(elements):
        if i:
            parts.append(draw(_OPS))
        parts.append(draw(_SPACE) + base + exp + draw(_SPACE))
    return "".join(parts)


_UNIT_TEXT = programmatic_units() | st.text(max_size=60)
_QUANTITIES = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**120),
    st.integers(min_value=0, max_value=10**150).map(str),
    st.text(alphabet="0123456789 +-.e${}x\t", max_size=120),
    st.text(max_size=20),
)


def _bounded(fn, *args, **kw):
    start = time.perf_counter()
    try:
        return fn(*args, **kw)
    finally:
        assert time.perf_counter() - start < PER_EXAMPLE


@settings(max_examples=400, deadline=None)
@given(_UNIT_TEXT)
def test_unit_expressions_give_a_multiplier_or_units_error(text: str) -> None:
    try:
        n = _bounded(parse_byte_units, text, path="t.ovf")
    except UnitsError as e:
        assert "\n" not in str(e) and str(e).startswith("t.ovf: ")
        assert len(str(e)) < 300  # a hostile value is cut short
    else:
        assert isinstance(n, int) and 1 <= n <= MAX_MULTIPLIER


@settings(max_examples=400, deadline=None)
@given(_QUANTITIES, st.none() | _UNIT_TEXT)
def test_to_bytes_gives_bytes_or_units_error(quantity, unit) -> None:
    try:
        n = _bounded(to_bytes, quantity, unit, path="t.ovf")
    except UnitsError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(n, int) and n >= 0
        multiplier = parse_byte_units(unit if unit is not None else "byte")
        assert n % multiplier == 0 and n // multiplier <= 10**150


_NAMES = st.text(alphabet="abc.{}$", max_size=6)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab${}. 12", max_size=60),
       st.dictionaries(_NAMES, st.none() | st.text(alphabet="12${}ab", max_size=10),
                       max_size=5))
def test_property_references_resolve_or_units_error(text: str, props) -> None:
    try:
        out = _bounded(resolve_properties, text, props, path="t.ovf")
    except UnitsError as e:
        assert "\n" not in str(e) and "${" in text
    else:
        assert isinstance(out, str)
        if "${" not in text:
            assert out == text
