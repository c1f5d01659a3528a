"""Hostile sizes in units and ${property} references cost little (issue 10).

A unit expression of a million factors, or a capacity of a thousand
references to a one-MiB property, once took half a minute or gigabytes;
they are now refused from their lengths alone, in one line, before any
parser runs or any string is built.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ganeti_ovf import units
from ganeti_ovf.errors import UnitsError

OVFCONVERTER = str(Path(__file__).resolve().parents[2] / "scripts" / "ovfconverter")
OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
# The documented bounds (units.MAX_UNIT_CHARS, MAX_EXPANDED_CHARS, MAX_REFERENCES).
UNIT_CHARS, EXPANDED_CHARS, REFERENCES = 256, 64 * 1024, 1024


def test_bounds_are_the_documented_ones() -> None:
    assert (units.MAX_UNIT_CHARS, units.MAX_EXPANDED_CHARS, units.MAX_REFERENCES) == (
        UNIT_CHARS, EXPANDED_CHARS, REFERENCES)


def test_long_unit_expression_is_refused_fast() -> None:
    text = "byte" + " * 1" * 1_000_000
    start = time.monotonic()
    with pytest.raises(UnitsError) as e:
        units.parse_byte_units(text, path="t.ovf")
    assert time.monotonic() - start < 5
    assert str(e.value) == ("t.ovf: oversized allocation unit "
                            f"{text[:80]!r}... ({len(text)} characters)")
    assert e.value.value == text


def test_unit_expression_up_to_the_bound_is_read() -> None:
    longest = "byte" + " * 1" * ((UNIT_CHARS - 4) // 4)
    assert len(longest) == UNIT_CHARS
    assert units.parse_byte_units(longest) == 1
    with pytest.raises(UnitsError, match="oversized allocation unit"):
        units.parse_byte_units(longest + " ")


def test_too_many_property_references_are_refused_fast() -> None:
    text = "${a}" * 1_000_000
    start = time.monotonic()
    with pytest.raises(UnitsError) as e:
        units.resolve_properties(text, {"a": "1" * (1 << 20)}, path="t.ovf")
    assert time.monotonic() - start < 5
    assert str(e.value) == f"t.ovf: more than {REFERENCES} property references"


@pytest.mark.parametrize("refs, size", [(1, EXPANDED_CHARS + 1), (17, 4000),
                                        (REFERENCES, 1 << 20)])
def test_oversized_property_expansion_is_refused(refs: int, size: int) -> None:
    text = "${a}" * refs
    with pytest.raises(UnitsError) as e:
        units.resolve_properties(text, {"a": "7" * size}, path="t.ovf")
    assert str(e.value) == (f"t.ovf: property references expand to {refs * size} "
                            f"characters (at most {EXPANDED_CHARS})")


def test_property_expansion_up_to_the_bound_is_built() -> None:
    text = "${a}${b}"
    half = EXPANDED_CHARS // 2
    assert units.resolve_properties(text, {"a": "1" * half, "b": "2" * half}) == (
        "1" * half + "2" * half)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=UNIT_CHARS + 1, max_size=4 * UNIT_CHARS))
def test_any_unit_text_over_the_bound_is_oversized(text: str) -> None:
    with pytest.raises(UnitsError, match="^oversized allocation unit"):
        units.parse_byte_units(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["${a}", "${b}", "x"]), max_size=2 * REFERENCES),
       st.integers(0, 2 * EXPANDED_CHARS), st.integers(0, 200))
def test_expansion_is_bounded_or_refused(parts: list[str], a: int, b: int) -> None:
    text = "".join(parts)
    try:
        result = units.resolve_properties(text, {"a": "1" * a, "b": "2" * b})
    except UnitsError as e:
        assert "property references" in e.problem
    else:
        assert len(result) <= EXPANDED_CHARS


def _descriptor(capacity: str, prop: str, unit: str = "byte") -> str:
    return (f'<Envelope xmlns="{OVF1}" xmlns:ovf="{OVF1}" xmlns:rasd="{RASD}">'
            '<References><File ovf:id="f1" ovf:href="a.vmdk"/></References>'
            '<DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" '
            f'ovf:capacity="{capacity}" ovf:capacityAllocationUnits="{unit}"/></DiskSection>'
            '<VirtualSystem ovf:id="vm"><Info>x</Info><ProductSection><Info>p</Info>'
            f'<Property ovf:key="a" ovf:type="string" ovf:value="{prop}"/></ProductSection>'
            "<VirtualHardwareSection><Info>hw</Info>"
            "<Item><rasd:ResourceType>17</rasd:ResourceType>"
            "<rasd:HostResource>ovf:/disk/d1</rasd:HostResource></Item>"
            "</VirtualHardwareSection></VirtualSystem></Envelope>")


def _info(ovf: Path) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """ovfconverter info in a grandchild, measured by a small child of its
    own (a forked pytest would carry the parent's peak RSS): (result,
    seconds, peak RSS in KiB)."""
    code = ("import resource, subprocess, sys\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "sys.stderr.write(r.stdout + r.stderr)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code, sys.executable, OVFCONVERTER, "info",
                          str(ovf)], capture_output=True, text=True, timeout=60, check=False)
    return res, time.monotonic() - start, int(res.stdout.split()[-1])


@pytest.mark.parametrize("capacity, prop, unit, problem", [
    # 1000 references to 1 MiB: once a 1 GB string
    ("${a}" * 1000, "1" * (1 << 20), "byte",
     "property references expand to 1048576000 characters (at most 65536)"),
    # 200000 references to 4000 digits: once 800 MB
    ("${a}" * 200_000, "1" * 4000, "byte", "more than 1024 property references"),
    # a million factors: once half a minute and 870 MB
    ("1", "1", "byte" + " * 1" * 1_000_000, "oversized allocation unit 'byte * 1 * 1"),
])
def test_hostile_capacity_costs_little(tmp_path: Path, capacity: str, prop: str, unit: str,
                                       problem: str) -> None:
    ovf = tmp_path / "bomb.ovf"
    ovf.write_text(_descriptor(capacity, prop, unit))
    (tmp_path / "a.vmdk").write_bytes(b"")
    before = set(tmp_path.iterdir())
    res, took, peak_kib = _info(ovf)
    assert took < 5, res.stderr[-2000:]
    assert peak_kib < 300 * 1024, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    (note,) = [line for line in res.stderr.splitlines() if "disk 'd1'" in line]
    assert problem in note and len(note) < 600
    assert note.endswith("import needs --disk N:size=SIZE")
    assert set(tmp_path.iterdir()) == before
