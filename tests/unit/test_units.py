"""Tests for ``ganeti_ovf.units``: DSP0004 byte units, quantities, ``${name}``.

Spellings in the shared corpus (/work/shared/ovf/corpus), from every
``AllocationUnits``, ``VirtualQuantityUnits`` and ``capacityAllocationUnits``
value, OVA members included (count of occurrences):

    byte units                         not byte units (must be refused)
    "byte * 2^20"       340+181+2      "hertz * 10^6"     331
    "byte * 2^30"           105        "hertz * 10^9"       6
    "MegaBytes"              68        "count"              2 (VirtualQuantityUnits)
    "byte"                50+5         "Processor Cores"    1 (XenCenter)
    "byte * 2 ^ 30"          10        "Disk"               1 (XenCenter)
    "byte * 2 ^ 20"           7        "1048576"            1 (allocationUnits=,
    "byte*1024*1024"          4                                in an ovftool
                                                               negative test)

``CORPUS_BYTE_UNITS`` and ``CORPUS_OTHER_UNITS`` below hold exactly these.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ganeti_ovf import units
from ganeti_ovf.errors import OvfError, UnitsError
from ganeti_ovf.units import (
    MAX_MULTIPLIER,
    format_byte_units,
    parse_byte_units,
    resolve_properties,
    to_bytes,
)

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40

CORPUS_BYTE_UNITS = {
    "byte": 1,
    "byte * 2^20": MIB,
    "byte * 2^30": GIB,
    "byte * 2 ^ 20": MIB,
    "byte * 2 ^ 30": GIB,
    "byte*1024*1024": MIB,
    "MegaBytes": MIB,
}

CORPUS_OTHER_UNITS = {
    "hertz * 10^6": "non-byte allocation unit 'hertz * 10^6'",
    "hertz * 10^9": "non-byte allocation unit 'hertz * 10^9'",
    "count": "non-byte allocation unit 'count'",
    "Processor Cores": "unknown allocation unit 'Processor Cores'",
    "Disk": "unknown allocation unit 'Disk'",
    "1048576": "non-byte allocation unit '1048576'",
}

OTHER_BYTE_UNITS = {
    # DSP0004 forms, spaced and unspaced
    "bytes": 1,
    "byte*2^30": GIB,
    "byte * 2^ 20": MIB,
    "byte *2 ^20": MIB,
    "  byte * 2^20  ": MIB,
    "byte\t*\t2^20": MIB,
    "byte * 2^0": 1,
    "byte * 2^+10": KIB,
    "byte * 10^3": 1000,
    "byte * 10^6": 10**6,
    "byte * 1024": KIB,
    "byte * 512": 512,
    "byte * 2^10 * 1024": MIB,
    "byte * 2^20 * 4": 4 * MIB,
    "byte * 2^20 / 2^10": KIB,
    "byte * 1000 / 8": 125,
    "byte * 0.5 * 4": 2,
    "2^20 * byte": MIB,
    "byte^1 * 2^20": MIB,
    "byte * 2^128": MAX_MULTIPLIER,
    # DSP0004 prefixed units, decimal prefixes read as binary
    "kilobyte": KIB,
    "megabyte": MIB,
    "gigabyte": GIB,
    "terabyte": TIB,
    "kibibyte": KIB,
    "mebibyte": MIB,
    "gibibyte": GIB,
    "tebibyte": TIB,
    "megabyte * 4": 4 * MIB,
    # vendor words: VirtualBox, oVirt, old ovftool, Ganeti's ovfconverter
    "B": 1,
    "KB": KIB,
    "KiloBytes": KIB,
    "kilobytes": KIB,
    "MB": MIB,
    "MegaByte": MIB,
    "megabytes": MIB,
    "GB": GIB,
    "GigaBytes": GIB,
    "TB": TIB,
    "KiB": KIB,
    "MiB": MIB,
    "GiB": GIB,
    "TiB": TIB,
    "mib": MIB,
    "MEGABYTES": MIB,
    "Byte * 2^20": MIB,
    "BYTE * 2^30": GIB,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    sorted(CORPUS_BYTE_UNITS.items()) + sorted(OTHER_BYTE_UNITS.items()),
)
def test_parse_byte_units(text: str, expected: int) -> None:
    assert parse_byte_units(text) == expected


@pytest.mark.parametrize(("text", "message"), sorted(CORPUS_OTHER_UNITS.items()))
def test_corpus_non_byte_units_are_refused(text: str, message: str) -> None:
    with pytest.raises(UnitsError, match=f"^{re.escape(message)}$"):
        parse_byte_units(text)


REFUSED = [
    ("furlongs", "unknown allocation unit 'furlongs'"),
    ("furlongs * 2^20", "unknown allocation unit 'furlongs * 2^20'"),
    ("MegaBites", "unknown allocation unit 'MegaBites'"),
    ("", "empty allocation unit ''"),
    ("   ", "empty allocation unit '   '"),
    ("byte * * 2", "malformed allocation unit 'byte * * 2'"),
    ("byte * 2^", "malformed allocation unit 'byte * 2^'"),
    ("byte 2^20", "malformed allocation unit 'byte 2^20'"),
    ("byte * 2**20", "malformed allocation unit 'byte * 2**20'"),
    ("byte * -2", "malformed allocation unit 'byte * -2'"),
    ("1024byte", "malformed allocation unit '1024byte'"),
    ("-byte", "negative allocation unit '-byte'"),
    ("- byte * 2^20", "negative allocation unit '- byte * 2^20'"),
    ("byte * 2^-20", "negative exponent in allocation unit 'byte * 2^-20'"),
    ("byte * 2^ -3", "negative exponent in allocation unit 'byte * 2^ -3'"),
    ("byte^-1", "negative exponent in allocation unit 'byte^-1'"),
    ("byte * 2^1.5", "fractional exponent in allocation unit 'byte * 2^1.5'"),
    ("byte * 2^20.0", "fractional exponent in allocation unit 'byte * 2^20.0'"),
    ("byte * 0", "zero factor in allocation unit 'byte * 0'"),
    ("byte / 0", "zero factor in allocation unit 'byte / 0'"),
    ("byte / 3", "fractional multiplier in allocation unit 'byte / 3'"),
    ("byte * 1.5", "fractional multiplier in allocation unit 'byte * 1.5'"),
    ("byte * 2^129", "oversized allocation unit 'byte * 2^129'"),
    ("byte * 10^99999999", "oversized allocation unit 'byte * 10^99999999'"),
    ("hertz", "non-byte allocation unit 'hertz'"),
    ("megahertz", "non-byte allocation unit 'megahertz'"),
    ("MHz", "non-byte allocation unit 'MHz'"),
    ("seconds", "non-byte allocation unit 'seconds'"),
    ("bit * 2^20", "non-byte allocation unit 'bit * 2^20'"),
    ("2^20", "non-byte allocation unit '2^20'"),
    ("byte^2", "non-byte allocation unit 'byte^2'"),
    ("byte * byte", "non-byte allocation unit 'byte * byte'"),
    ("byte / second", "non-byte allocation unit 'byte / second'"),
    ("1 / byte", "non-byte allocation unit '1 / byte'"),
    ("byte * hertz", "non-byte allocation unit 'byte * hertz'"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_parse_byte_units_refuses(text: str, message: str) -> None:
    with pytest.raises(UnitsError, match=f"^{re.escape(message)}$") as info:
        parse_byte_units(text)
    assert info.value.value == text
    assert info.value.path is None


def test_error_carries_path_and_value() -> None:
    with pytest.raises(UnitsError) as info:
        parse_byte_units("furlongs", path="vm.ovf")
    assert str(info.value) == "vm.ovf: unknown allocation unit 'furlongs'"
    assert info.value.path == "vm.ovf"
    assert info.value.value == "furlongs"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_long_values_are_cut_short_in_messages() -> None:
    text = "byte * " + "9" * 5000
    with pytest.raises(UnitsError) as info:
        parse_byte_units(text)
    shown = repr(text[:80])
    assert str(info.value) == f"oversized allocation unit {shown}... (5007 characters)"
    assert info.value.value == text


@pytest.mark.parametrize(
    ("multiplier", "text"),
    [
        (1, "byte"),
        (2, "byte * 2^1"),
        (KIB, "byte * 2^10"),
        (MIB, "byte * 2^20"),
        (GIB, "byte * 2^30"),
        (MAX_MULTIPLIER, "byte * 2^128"),
        (10, "byte * 10^1"),
        (1000, "byte * 10^3"),
        (3, "byte * 3"),
        (1536, "byte * 1536"),
    ],
)
def test_format_byte_units(multiplier: int, text: str) -> None:
    assert format_byte_units(multiplier) == text
    assert parse_byte_units(text) == multiplier


@pytest.mark.parametrize(
    ("multiplier", "error", "message"),
    [
        (0, ValueError, "multiplier must be in 1..2**128, got 0"),
        (-1, ValueError, "multiplier must be in 1..2**128, got -1"),
        (MAX_MULTIPLIER + 1, ValueError, f"got {MAX_MULTIPLIER + 1}"),
        (1.0, TypeError, "multiplier must be an int, got 1.0"),
        (True, TypeError, "multiplier must be an int, got True"),
        ("1", TypeError, "multiplier must be an int, got '1'"),
    ],
)
def test_format_byte_units_refuses(multiplier: object, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        format_byte_units(multiplier)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=MAX_MULTIPLIER))
def test_round_trip_any_multiplier(multiplier: int) -> None:
    assert parse_byte_units(format_byte_units(multiplier)) == multiplier


@given(st.integers(min_value=0, max_value=128))
def test_round_trip_powers_of_two(exponent: int) -> None:
    text = format_byte_units(2**exponent)
    assert text == ("byte" if exponent == 0 else f"byte * 2^{exponent}")
    assert parse_byte_units(text) == 2**exponent


_SPACE = st.text(alphabet=" \t\n", max_size=3)


@given(st.integers(min_value=0, max_value=64), st.lists(_SPACE, min_size=6, max_size=6))
def test_spacing_does_not_matter(exponent: int, spaces: list[str]) -> None:
    tokens = ["byte", "*", "2", "^", str(exponent)]
    text = "".join(space + token for space, token in zip(spaces, tokens, strict=False)) + spaces[5]
    assert parse_byte_units(text) == 2**exponent


@given(
    st.sampled_from(["byte", "MegaBytes", "gigabyte", "KiB", "GB"]),
    st.lists(st.booleans(), min_size=9, max_size=9),
)
def test_letter_case_does_not_matter(word: str, upper: list[bool]) -> None:
    mixed = "".join(c.upper() if up else c.lower() for c, up in zip(word, upper, strict=False))
    assert parse_byte_units(mixed) == parse_byte_units(word)


@given(st.text(max_size=40) | st.text(alphabet="byteBYTE hz0123456789*/^+-.", max_size=40))
def test_any_text_gives_a_multiplier_or_units_error(text: str) -> None:
    try:
        multiplier = parse_byte_units(text)
    except UnitsError as err:
        assert isinstance(err, OvfError)
        assert "\n" not in str(err)
    else:
        assert 1 <= multiplier <= MAX_MULTIPLIER


@pytest.mark.parametrize(
    ("quantity", "unit", "expected"),
    [
        ("16", "byte * 2^30", 16 * GIB),
        (" 16 ", "byte * 2^30", 16 * GIB),
        ("\t512\n", "MegaBytes", 512 * MIB),
        ("+4", "byte * 2^20", 4 * MIB),
        ("0", "byte * 2^20", 0),
        ("017", "byte", 17),
        ("10240", "byte*1024*1024", 10 * GIB),
        (4096, "byte", 4096),
        (2, "GB", 2 * GIB),
        ("5368709120", None, 5368709120),
        (7, None, 7),
    ],
)
def test_to_bytes(quantity: str | int, unit: str | None, expected: int) -> None:
    assert to_bytes(quantity, unit) == expected


def test_to_bytes_default_units() -> None:
    assert to_bytes("1024", None, default_units="byte * 2^20") == GIB
    assert to_bytes("1024", "byte", default_units="byte * 2^20") == 1024


@pytest.mark.parametrize(
    ("quantity", "unit", "message"),
    [
        ("-5", "byte", "negative quantity '-5'"),
        (" - 5", "byte", "negative quantity ' - 5'"),
        (-5, "byte", "negative quantity -5"),
        ("abc", "byte", "non-numeric quantity 'abc'"),
        ("", "byte", "non-numeric quantity ''"),
        ("1.5", "byte", "non-numeric quantity '1.5'"),
        ("1e6", "byte", "non-numeric quantity '1e6'"),
        ("1_000", "byte", "non-numeric quantity '1_000'"),
        ("\uff15", "byte", "non-numeric quantity '\uff15'"),
        ("${disk_size}", "byte", "non-numeric quantity '${disk_size}'"),
        ("1" * 101, "byte", f"oversized quantity {'1' * 80!r}... (101 characters)"),
        ("16", "hertz * 10^6", "non-byte allocation unit 'hertz * 10^6'"),
        ("16", "", "empty allocation unit ''"),
        ("16", None, "unknown allocation unit 'furlongs'"),
    ],
)
def test_to_bytes_refuses(quantity: str | int, unit: str | None, message: str) -> None:
    with pytest.raises(UnitsError, match=f"^{re.escape('ovf: ' + message)}$"):
        to_bytes(quantity, unit, default_units="furlongs", path="ovf")


PROPERTIES = {
    "disksize": "5",
    "esxi1-OSDiskSize": "12",
    "vami.ip0.ubuntu8.04": "10.0.0.1",
    "nested": "${disksize}",
    "unset": None,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${disksize}", "5"),
        ("${esxi1-OSDiskSize}", "12"),
        ("http://${vami.ip0.ubuntu8.04}/", "http://10.0.0.1/"),
        ("${disksize}${disksize}", "55"),
        ("${nested}", "${disksize}"),  # one pass, no re-expansion
        ("4096", "4096"),
        ("", ""),
        ("$5 {x}", "$5 {x}"),
    ],
)
def test_resolve_properties(text: str, expected: str) -> None:
    assert resolve_properties(text, PROPERTIES) == expected


def test_resolve_properties_without_reference_ignores_properties() -> None:
    assert resolve_properties("1024", {}) == "1024"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${disk_size}", "unknown property 'disk_size'"),
        ("${DiskSize}", "unknown property 'DiskSize'"),
        ("${unset}", "property 'unset' has no value"),
        ("${disksize", "unterminated property reference in '${disksize'"),
        ("${}", "empty property reference in '${}'"),
    ],
)
def test_resolve_properties_refuses(text: str, message: str) -> None:
    with pytest.raises(UnitsError, match=f"^{re.escape('vm.ovf: ' + message)}$") as info:
        resolve_properties(text, PROPERTIES, path="vm.ovf")
    assert info.value.value == text


def test_property_then_units() -> None:
    capacity = resolve_properties("${disksize}", PROPERTIES)
    assert to_bytes(capacity, "byte * 2^30") == 5 * GIB


def test_public_surface() -> None:
    assert sorted(units.__all__) == [
        "MAX_EXPANDED_CHARS",
        "MAX_MULTIPLIER",
        "MAX_REFERENCES",
        "MAX_UNIT_CHARS",
        "format_byte_units",
        "parse_byte_units",
        "resolve_properties",
        "to_bytes",
    ]
